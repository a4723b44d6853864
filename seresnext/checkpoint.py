"""Reading and writing weight files and training checkpoints.

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint can never run code. Writes are atomic
(temporary file in the same folder, fsync, rename), so a crash mid-write never leaves a broken file.

A training checkpoint (``checkpoint.pth.tar``, copied to ``model_best.pth.tar`` when top-1 improves) is a dict
whose keys :class:`TrainingCheckpoint` defines: upstream's ``epoch``, ``state_dict``, ``best_acc1`` and
``optimizer``, plus the additions that resume a run exactly and let demo scripts name the classes.
"""
from __future__ import annotations

import copy
import io
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import MISSING, dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import first_line
from .formats import WriteError, atomic_write, remove_temporaries

__all__ = ["CheckpointError", "TrainingCheckpoint", "load_checkpoint", "state_dict_from", "strip_module_prefix",
           "load_model_weights", "apply_state_dict", "save_checkpoint", "CHECKPOINT_NAME", "BEST_NAME",
           "plain_data", "save_training_checkpoint", "CheckpointWriter",
           "load_training_checkpoint", "find_latest_checkpoint", "prepare_output_dir", "earlier_run_files",
           "remove_stale_temporaries", "optimizer_kind", "restore_optimizer", "CheckpointInterval"]

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
# the optimizer settings a resumed run takes from its own flags rather than from the checkpoint
_OPTIMIZER_FLAGS = {"weight_decay": "--wd", "momentum": "--momentum"}


class CheckpointError(ValueError):
    """A weight file or checkpoint that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, kw_only=True)
class TrainingCheckpoint:
    """What a training checkpoint holds, defined once: main.py writes :meth:`to_dict`, a resume reads
    :meth:`from_dict`, and :func:`load_training_checkpoint` requires the fields without a default (a checkpoint
    of upstream's main.py has those too). The keys keep this order in the file."""

    epoch: int  # the next epoch to run
    epoch_step: int = 0  # steps of ``epoch`` already done: non-zero only when a run was interrupted mid-epoch
    epoch_images: int | None = None  # samples of ``epoch`` each process has trained on (a resume at another -b)
    images_per_step: int | None = None  # per process and optimizer step: -b x --accum-steps
    global_step: int = 0
    state_dict: Mapping[str, torch.Tensor]  # the unwrapped model, no ``module.`` prefix
    best_acc1: float = 0.0
    optimizer: Mapping[str, Any] | None = None
    scaler: Mapping[str, Any] | None = None  # GradScaler state
    args: Mapping[str, Any] | None = None  # the command line as plain data (:func:`plain_data`)
    arch: str = "se_resnext50_32x4d"
    num_classes: int | None = None
    classes: list[str] | None = None  # folder names, e.g. WNIDs
    class_names: list[str] | None = None  # human-readable names, for demo scripts

    @classmethod
    def required_keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.default is MISSING]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> TrainingCheckpoint:
        """The fields ``obj`` holds (others keep their defaults), the positions as int and ``best_acc1`` as float."""
        values = {f.name: obj[f.name] for f in fields(cls) if f.name in obj}
        for name, kind in (("epoch", int), ("epoch_step", int), ("global_step", int), ("best_acc1", float)):
            if name in values:
                values[name] = kind(values[name])
        return cls(**values)


def load_checkpoint(path: str | PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pth`` / ``.pth.tar`` safely (weights only) and return the stored object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = first_line(exc)
        raise CheckpointError(f"{path}: refused by the weights-only loader (it holds objects or code that a "
                              f"weight file must not carry): {first}") from None
    except Exception as exc:  # the unpickler raises many types on a corrupt file
        first = first_line(exc)
        raise CheckpointError(f"{path}: not a readable PyTorch weight file ({first})") from None


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that DDP / DataParallel add to every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def state_dict_from(obj: Any, path: str | PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """The model state dict inside a bare state dict or a training checkpoint (``state_dict`` key)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: not a state dict or a checkpoint with a 'state_dict' "
                              f"(found {type(obj).__name__})")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: not a state dict: {len(not_tensors)} entries are not tensors "
                              f"(first: {not_tensors[0]!r})")
    return strip_module_prefix(obj)


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_model_weights(model: nn.Module, path: str | PathLike, *, skip_prefixes: Iterable[str] = (),
                       map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load ``path`` into ``model`` strictly, except for keys under ``skip_prefixes`` (e.g. a fresh head).

    Raises :class:`CheckpointError` listing the missing, unexpected and mis-shaped keys when the file does
    not fit. Returns the state dict that was read.
    """
    loaded = state_dict_from(load_checkpoint(path, map_location), path)
    apply_state_dict(model, loaded, path, skip_prefixes=skip_prefixes)
    return loaded


def apply_state_dict(model: nn.Module, loaded: Mapping[str, torch.Tensor], path: str | PathLike = "<memory>", *,
                     skip_prefixes: Iterable[str] = ()) -> None:
    """Load an already-read state dict into ``model`` with the checks of :func:`load_model_weights`."""
    skip = tuple(skip_prefixes)
    loaded = strip_module_prefix(loaded)
    own = model.state_dict()
    keep = lambda k: not (skip and k.startswith(skip))  # noqa: E731
    missing = [k for k in own if keep(k) and k not in loaded]
    unexpected = [k for k in loaded if keep(k) and k not in own]
    misshaped = [f"{k} (file {tuple(loaded[k].shape)}, model {tuple(own[k].shape)})"
                 for k in own if keep(k) and k in loaded and loaded[k].shape != own[k].shape]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {_abbreviate(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_abbreviate(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped keys: {_abbreviate(misshaped)}")
        raise CheckpointError(f"{path}: does not fit the model; " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in loaded.items() if keep(k)}, strict=not skip)


def save_checkpoint(obj: Any, path: str | PathLike) -> None:
    """``torch.save`` atomically; ``obj`` must hold only tensors and plain data (weights-only loadable)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer())


def plain_data(value: Any) -> Any:
    """``value`` made of str/int/float/bool/None/list/dict only (e.g. ``vars(args)``), so that the
    weights-only loader accepts it; anything else becomes its ``str``."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, PathLike):
        return os.fspath(value)
    return str(value)


def save_training_checkpoint(state: Mapping[str, Any], output_dir: str | PathLike, is_best: bool) -> Path:
    """Write ``<output_dir>/checkpoint.pth.tar`` and, when ``is_best``, ``model_best.pth.tar``, both atomically.

    The object is serialised once and the same bytes go to both files. Returns the checkpoint path.
    """
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getbuffer()
    # model_best first, so that checkpoint.pth.tar is always the newest file
    for path in ([Path(output_dir) / BEST_NAME] if is_best else []) + [Path(output_dir) / CHECKPOINT_NAME]:
        try:
            atomic_write(path, data)
        except OSError as exc:  # the file under this name is still the previous, complete one
            raise WriteError.naming(path, exc) from None
    return path


def _snapshot(obj: Any) -> Any:
    """A CPU copy of ``obj`` whose tensors no longer change when training updates the originals (dicts keep
    their type and attributes, such as a state dict's ``_metadata``)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for key, value in obj.items():
            out[key] = _snapshot(value)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


WRITER_NICENESS = 19


def _lower_thread_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: threads have their own nice value).

    The checkpoint writer's serialisation competes with the training step's compute threads; on a small CPU
    (2 cores, 2 compute threads) a third busy thread stalls the step's parallel regions far beyond its own CPU
    time. At nice 19 it runs when the step leaves a core idle, and the write simply takes longer."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
    except OSError:  # not Linux (a process-wide nice), or not permitted: the writer runs at normal priority
        pass


class CheckpointWriter:
    """:func:`save_training_checkpoint` in a background thread, so that training goes on while a checkpoint
    (about 300 MB for this model and its optimizer) is serialised, written and fsynced.

    :meth:`submit` copies the state's tensors to the CPU first (a tenth of a second), so the file holds the
    state as it was at the call, with CPU tensors. One write runs at a time: ``submit`` first waits for the
    previous one, and :meth:`wait` (also called on leaving the ``with`` block) raises the error of a failed
    write; when the block is left by an exception, that exception is the one reported. Each file is still
    written atomically, so a crash mid-write leaves the previous checkpoint intact.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer",
                                            initializer=_lower_thread_priority)
        self._pending: Future | None = None

    def submit(self, state: Mapping[str, Any], output_dir: str | PathLike, is_best: bool) -> None:
        self.wait()
        self._pending = self._executor.submit(save_training_checkpoint, _snapshot(dict(state)), output_dir, is_best)

    def check(self) -> None:
        """Raise the error of the last submitted write if it has already failed (never waits), so that a run
        stops at once rather than at the next :meth:`submit`."""
        pending = self._pending
        if pending is not None and pending.done() and pending.exception() is not None:
            self.wait()

    def wait(self) -> Path | None:
        """Block until the last submitted checkpoint is on disk; return its path (None if nothing was pending)."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
            # otherwise the error already on its way out (a non-finite loss, a crash) is the one to report


@dataclass
class CheckpointInterval:
    """When a run writes a checkpoint between epoch ends: after every ``steps``-th training step of the run
    (global steps N, 2N, ...) and/or once ``seconds`` have passed since the last checkpoint of any kind (an
    epoch end's included); 0 turns either off. The time is this process's monotonic clock."""

    steps: int = 0
    seconds: float = 0.0
    clock: Callable[[], float] = time.monotonic
    _last: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.seconds < 0:
            raise ValueError(f"checkpoint interval: {self.steps} steps, {self.seconds} s: must not be negative")
        self._last = self.clock()

    def due(self, global_step: int) -> bool:
        """Whether a checkpoint is due after ``global_step`` steps of the run."""
        by_steps = self.steps > 0 and global_step % self.steps == 0
        return by_steps or (self.seconds > 0 and self.clock() - self._last >= self.seconds)

    def restart(self) -> None:
        """A checkpoint was just written (or submitted): the time interval counts from now."""
        self._last = self.clock()


def load_training_checkpoint(path: str | PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint (weights only) and check that it has upstream's keys."""
    obj = load_checkpoint(path, map_location)
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        raise CheckpointError(f"{path}: not a training checkpoint (no 'state_dict'); a bare weight file is used "
                              f"with --pretrained, not --resume")
    missing = [k for k in TrainingCheckpoint.required_keys() if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    return dict(obj)


def find_latest_checkpoint(output_dir: str | PathLike) -> Path | None:
    """The newest training checkpoint in ``output_dir`` (``checkpoint.pth.tar`` or ``model_best.pth.tar``),
    or None; ``checkpoint.pth.tar`` wins a tie, being at least as far along."""
    folder = Path(output_dir)
    candidates = [p for p in (folder / CHECKPOINT_NAME, folder / BEST_NAME) if p.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name == CHECKPOINT_NAME))


def prepare_output_dir(path: str | PathLike) -> Path:
    """Create ``path`` if needed and check that a file can be written in it, before any work starts.

    Raises :class:`WriteError` naming the folder and the OS error (a path under a file, a read-only or full
    file system).
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"0")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise WriteError(f"--output-dir {path}: cannot write there ({exc.strerror or exc})") from None
    return folder


def earlier_run_files(output_dir: str | PathLike) -> list[str]:
    """The names of the training checkpoints (``checkpoint.pth.tar``, ``model_best.pth.tar``) already in
    ``output_dir``: a new run there would replace them."""
    return [name for name in (CHECKPOINT_NAME, BEST_NAME) if (Path(output_dir) / name).is_file()]


def remove_stale_temporaries(output_dir: str | PathLike) -> list[Path]:
    """Delete what killed checkpoint writes left in ``output_dir`` (``.checkpoint.pth.tar.<random>.tmp``,
    each as large as a checkpoint) and return the paths; no other file is touched."""
    return remove_temporaries(output_dir, lambda name: name in (CHECKPOINT_NAME, BEST_NAME))


def optimizer_kind(param_groups: Iterable[Mapping[str, Any]]) -> str:
    """``adamw`` or ``sgd`` (main.py's ``--optimizer`` values), told from an optimizer's parameter groups."""
    return "adamw" if any("betas" in group for group in param_groups) else "sgd"


def restore_optimizer(optimizer: torch.optim.Optimizer, state: Mapping[str, Any], path: str | PathLike) -> list[str]:
    """Load a checkpoint's optimizer state (moments, step counts) but keep this run's ``--wd`` and
    ``--momentum``; return one ``"--wd 0.0005 (checkpoint: 0.0001)"`` entry per setting that differs.

    Raises :class:`CheckpointError` when the checkpoint was trained with another ``--optimizer`` or its state
    does not fit the trainable parameters of this run.
    """
    saved, current = optimizer_kind(state.get("param_groups", [])), optimizer_kind(optimizer.param_groups)
    if saved != current:
        raise CheckpointError(f"{path}: trained with --optimizer {saved}, so it cannot be resumed with --optimizer "
                              f"{current} (the optimizer states differ); resume with --optimizer {saved}, or start "
                              f"a new run (--overwrite or another --output-dir)")
    wanted = [{key: group[key] for key in _OPTIMIZER_FLAGS if key in group} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: its optimizer state does not fit this run's trainable parameters "
                              f"({exc})") from None
    changes: list[str] = []
    for group, values in zip(optimizer.param_groups, wanted):
        for key, value in values.items():
            if group[key] != value:
                change = f"{_OPTIMIZER_FLAGS[key]} {value:g} (checkpoint: {group[key]:g})"
                if change not in changes:
                    changes.append(change)
                group[key] = value
    return changes
