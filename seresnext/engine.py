"""One training epoch, one validation pass, the learning-rate schedule and upstream's log lines.

Log lines kept from upstream (launch wrappers and users grep them):

* ``Epoch: [e][ i/N]\\tTime ...\\tData ...\\tLoss ...\\tAcc@1 ...\\tAcc@5 ...`` every ``--print-freq`` steps;
* ``Test: [i/N]\\tTime ...\\tLoss ...\\tAcc@1 ...\\tAcc@5 ...`` during validation;
* ``[npu id: N ] * FPS@all 582.123`` after each epoch: global images/s over steady-state steps;
* ``[npu id: N ] [AVG-ACC] * Acc@1 78.239 Acc@5 94.123`` after validation, reduced over all ranks.

``npu id`` is the device index whatever the device type. Per-step metrics stay on the device; the host
reads them (one synchronisation) only every ``--print-freq`` steps and at the end of the epoch.

The test-only fault injection (``FaultHooks``) lives in :mod:`seresnext.faults`.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .data import check_bad_fraction
from .devices import Precision, synchronize
from .distributed import DistContext, all_reduce_sum
from .faults import FaultHooks

__all__ = ["cosine_lr", "NonFiniteLossError", "GracefulStop", "Printer", "TrainConfig",
           "EpochResult", "EvalResult", "correct_counts", "steady_state_window", "train_one_epoch", "evaluate",
           "check_finite_weights", "FPS_WARMUP_STEPS"]

FPS_WARMUP_STEPS = 5
"""Steps left out of the FPS measurement at the start of each epoch (upstream: 5)."""


# ------------------------------------------------------------------------------------------------- lr ---

def cosine_lr(base_lr: float, epoch: int, step: int, steps_per_epoch: int, epochs: int,
              warmup_epochs: int = 0) -> float:
    """Upstream's per-epoch cosine ``lr * 0.5 * (1 + cos(pi * epoch / epochs))``, after an optional linear
    per-step warm-up over ``warmup_epochs`` (the cosine then spans the remaining epochs).

    A pure function of the position, so a resumed run continues the same schedule with no saved state.
    """
    if epoch < warmup_epochs:
        done = epoch * steps_per_epoch + step + 1
        return base_lr * done / max(1, warmup_epochs * steps_per_epoch)
    span = max(1, epochs - warmup_epochs)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


# --------------------------------------------------------------------------------------------- faults ---

class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf too long, the loss scaler skipped too many steps in a row, or the weights went
    non-finite; the run stops without saving."""


class GracefulStop:
    """Turns SIGINT/SIGTERM into a request that the training loop honours at its next step boundary.

    Use as a context manager; the previous handlers come back on exit. A second signal of the same run
    does not kill the process either: the checkpoint being written must not be cut short.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> GracefulStop:
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


# -------------------------------------------------------------------------------------------- printing ---

class Printer:
    """Where log lines go: the main rank prints them (through tqdm while a progress bar is shown); warnings
    go to stderr from every rank."""

    def __init__(self, ctx: DistContext, progress_bar: bool = False):
        self.ctx = ctx
        self.progress_bar = progress_bar and ctx.is_main
        self._bar_active = False
        self.npu_id = f"[npu id: {ctx.device_index} ]"

    def line(self, text: str) -> None:
        if not self.ctx.is_main:
            return
        if self._bar_active:
            from tqdm import tqdm
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(text, flush=True)

    def warn(self, text: str) -> None:
        prefix = f"[rank {self.ctx.rank}] " if self.ctx.distributed else ""
        print(f"{prefix}=> warning: {text}", file=sys.stderr, flush=True)

    def bar(self, iterable: Iterable, total: int, desc: str) -> Iterable:
        if not self.progress_bar:
            return iterable
        from tqdm import tqdm

        def wrapped():
            self._bar_active = True
            try:
                yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                                file=sys.stderr)
            finally:
                self._bar_active = False
        return wrapped()


def _meter(name: str, val: float, avg: float, fmt: str) -> str:
    return f"{name} {val:{fmt}} ({avg:{fmt}})"


def _batch_fmt(num_batches: int) -> str:
    width = len(str(num_batches))
    return "[{:" + str(width) + "d}/" + str(num_batches) + "]"


# ---------------------------------------------------------------------------------------------- metrics ---

@torch.no_grad()
def correct_counts(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 and top-5 hit counts of a batch, as device tensors (works on every device type)."""
    k = min(5, output.shape[1])
    hits = output.topk(k, dim=1).indices == target[:, None]
    return hits[:, 0].sum(), hits.sum()


def steady_state_window(steps: int, warmup: int = FPS_WARMUP_STEPS) -> int:
    """How many leading steps of an epoch to leave out of FPS: ``warmup`` when the epoch is longer than
    that, 1 for shorter epochs of 2+ steps, none for a single step (so FPS never divides by zero)."""
    if steps > warmup:
        return warmup
    return 1 if steps > 1 else 0


def _profiled_step(start_step: int, total: int, max_steps: int | None) -> int:
    """The step ``--profile`` traces: the last one before the FPS window (:func:`steady_state_window`), so that
    neither the profiler's overhead nor the trace export counts in ``FPS@all`` (a one-step epoch has only that
    step, inside its window)."""
    planned = total - start_step if max_steps is None else min(total - start_step, max_steps)
    return start_step + max(steady_state_window(planned) - 1, 0)


def check_finite_weights(model: nn.Module) -> None:
    """Raise :class:`NonFiniteLossError` if any parameter or buffer holds NaN/inf (nothing must save it)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise NonFiniteLossError("the model weights became non-finite (NaN/inf); stopping without saving, so "
                                 "the last checkpoint written is left as it was. Try a lower --lr, --amp with "
                                 "--loss-scale-value dynamic, or --warmup-epochs.")


# ------------------------------------------------------------------------------------------------ train ---

@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop that stay fixed for a run."""

    print_freq: int = 10
    channels_last: bool = False
    max_nonfinite_steps: int = 20
    profile_path: Path | None = None  # --profile: Chrome trace of the last warm-up step, outside the FPS window
    accum_steps: int = 1  # micro-batches (loader batches) per optimizer step (--accum-steps)


@dataclass
class EpochResult:
    """Global (all-rank) metrics of one training epoch."""

    loss: float
    top1: float
    top5: float
    images_per_second: float
    seconds: float
    steps: int
    images: int
    skipped_images: int
    nonfinite_steps: int
    skipped_steps: int = 0  # steps the float16 loss scaler did not apply (inf/NaN gradients)
    stopped_by_signal: bool = False


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except BatchNorm layers whose weight and bias are frozen (``--pretrained``'s
    backbone): they stay in eval mode, so their running statistics stay frozen too."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parameters = list(module.parameters(recurse=False))
            if parameters and not any(p.requires_grad for p in parameters):
                module.eval()


class _StepSums(NamedTuple):
    """The figures :class:`_EpochMeter` sums on the device, for one step or the epoch so far."""

    loss_sum: float  # loss x images, over the steps whose loss was finite
    finite_images: float  # images of the steps whose loss was finite
    top1: float  # top-1 hits
    top5: float  # top-5 hits
    nonfinite_steps: float
    skipped_steps: float  # steps the loss scaler skipped (inf/NaN float16 gradients)


class _Step(NamedTuple):
    """What one optimizer step left: its loss (mean over its effective batch), top-1/top-5 hits, images, seconds
    spent waiting for data, and whether the loss scaler skipped it (device tensors except the counts)."""

    loss: torch.Tensor
    hits: torch.Tensor
    images: int
    data_seconds: float
    skipped: torch.Tensor


class _EpochMeter:
    """The running figures of one epoch on this rank.

    The :class:`_StepSums` stay in one device tensor (the host reads it only when a line is printed, and the
    ranks all-reduce it at once at the end); the counts of steps, images and data time are host numbers.
    ``streak`` counts the consecutive steps that changed nothing (non-finite loss or skipped by the scaler).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums = torch.zeros(len(_StepSums._fields), device=device)
        self.last = self.sums  # the last step's row
        self.streak = torch.zeros((), dtype=torch.long, device=device)
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # whether the last step's loss was
        self.bad_paths: list[str] = []
        self.steps = self.images = 0
        self.data_seconds = 0.0

    @torch.no_grad()
    def add(self, step: _Step) -> None:
        self.finite = finite = torch.isfinite(step.loss)
        self.last = torch.cat([torch.stack([torch.where(finite, step.loss, 0.0) * step.images,
                                            finite.float() * step.images]),
                               step.hits, torch.stack([(~finite).float(), step.skipped.float()])])
        self.sums += self.last
        self.streak = (self.streak + 1) * (~finite | step.skipped)
        self.steps += 1
        self.images += step.images
        self.data_seconds += step.data_seconds

    def running(self) -> _StepSums:
        return _StepSums(*self.sums.tolist())

    def latest(self) -> _StepSums:
        return _StepSums(*self.last.tolist())


class _EpochClock:
    """The epoch's time marks: its start, the (time, images) at the end of step 1 and of step
    ``FPS_WARMUP_STEPS`` that open the steady-state window (:func:`steady_state_window`), and the last print."""

    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.start = time.perf_counter()
        self.marks: dict[int, tuple[float, int]] = {0: (self.start, 0)}  # steps done -> (time, images)
        self.last_print = (self.start, 0)

    def step_done(self, steps: int, images: int) -> None:
        if steps in (1, FPS_WARMUP_STEPS):
            synchronize(self.device)
            self.marks[steps] = (time.perf_counter(), images)

    def step_times(self, steps: int) -> tuple[float, float]:
        """Seconds per step since the last print, and over the steady-state window so far."""
        now = time.perf_counter()
        warm = steady_state_window(steps)
        step_time = (now - self.last_print[0]) / max(1, steps - self.last_print[1])
        average = (now - self.marks[warm][0]) / max(1, steps - warm)
        self.last_print = (now, steps)
        return step_time, average

    def finish(self, steps: int, images: int) -> tuple[float, float]:
        """The epoch's seconds and this rank's images/s over the steady-state window."""
        synchronize(self.device)
        finish = time.perf_counter()
        warm_time, warm_images = self.marks[steady_state_window(steps)]
        rate = (images - warm_images) / max(finish - warm_time, 1e-9) if steps else 0.0
        return finish - self.start, rate


class _StepProfiler:
    """``--profile``: a Chrome trace of one step (:func:`_profiled_step`), unless the file exists already."""

    def __init__(self, path: Path | None, step: int, device: torch.device, printer: Printer):
        self.path, self.step, self.device, self.printer = path, step, device, printer
        self.active = None

    def start(self, step: int) -> None:
        if step == self.step and self.path is not None and not self.path.exists():
            self.active = torch.profiler.profile(record_shapes=True)
            self.active.__enter__()

    def stop(self, step: int) -> None:
        if self.active is not None:
            synchronize(self.device)
            self.active.__exit__(None, None, None)
            self.active.export_chrome_trace(str(self.path))
            self.printer.line(f"=> profile of step {step} written to '{self.path}'")
            self.active = None


@dataclass(frozen=True)
class _Stepper:
    """What an optimizer step needs that stays fixed for the epoch."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    hooks: FaultHooks
    printer: Printer
    device: torch.device
    memory_format: torch.memory_format
    accum: int
    no_sync: Callable | None  # DDP: skip the all-reduce of all but the last micro-batch

    def run(self, batches: Iterator, step: int, global_step: int, bad_paths: list[str]) -> _Step | None:
        """One optimizer step over ``accum`` micro-batches; None when the loader has no batch left for it."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        hits = torch.zeros(2, device=self.device)
        batch = 0
        data_seconds = 0.0
        for micro in range(self.accum):
            waited = time.perf_counter()
            item = next(batches, None)
            data_seconds += time.perf_counter() - waited
            if item is None:
                if micro == 0:
                    return None
                raise RuntimeError(f"the train loader ran out in the middle of step {step} (micro-batch {micro} of "
                                   f"{self.accum}); it must yield --accum-steps batches per step")
            images, target, bad = item
            if bad:
                bad_paths.extend(bad)
                for path in bad:
                    self.printer.warn(f"unreadable train image skipped: {path}")
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            target = target.to(self.device, non_blocking=True)
            sync = self.no_sync is None or micro == self.accum - 1
            with contextlib.nullcontext() if sync else self.no_sync():
                with self.precision.autocast():
                    output = self.model(images)
                    micro_loss = self.criterion(output, target)
                if self.hooks.active:
                    micro_loss = self.hooks.corrupt_loss(global_step, micro_loss)
                self.scaler.scale(micro_loss / self.accum).backward()
            with torch.no_grad():
                loss = loss + micro_loss.detach().float() / self.accum
                hits += torch.stack(correct_counts(output, target)).float()
            batch += images.shape[0]
        self.scaler.step(self.optimizer)
        skipped = _skipped_by_scaler(self.scaler, self.optimizer, self.device)  # read before update() forgets it
        self.scaler.update()
        return _Step(loss, hits, batch, data_seconds, skipped)


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: Iterable, device: torch.device, epoch: int, *, precision: Precision,
                    scaler: torch.amp.GradScaler, lr_at: Callable[[int, int], float], ctx: DistContext,
                    config: TrainConfig, printer: Printer, split_size: int, start_step: int = 0,
                    num_steps: int | None = None, global_step: int = 0, max_steps: int | None = None,
                    stop: GracefulStop | None = None, hooks: FaultHooks | None = None,
                    after_step: Callable[[int, int], None] | None = None) -> EpochResult:
    """Train for one epoch (from ``start_step`` when resuming mid-epoch) and return all-rank metrics.

    A step is one optimizer step over ``config.accum_steps`` consecutive loader batches (micro-batches): each
    micro-batch's loss is divided by their number and its gradients added up, so the step equals one over the
    whole effective batch (BatchNorm still normalises each micro-batch on its own). Under DDP the gradients are
    all-reduced only on the last micro-batch, and a loss scaler steps and updates once per step. Steps, the
    learning rate, ``max_steps``, the logged loss/accuracy and FPS all count optimizer steps and effective
    batches; the loader must yield ``accum_steps`` batches for each of the ``num_steps`` steps (default: as many
    whole steps as it holds).

    Stops early, at a step boundary, after ``max_steps`` steps or when ``stop`` was signalled (all ranks
    agree on it every ``print_freq`` steps). Raises :class:`NonFiniteLossError` when for
    ``config.max_nonfinite_steps`` consecutive steps the loss was non-finite or the loss scaler skipped the
    step (float16 gradients overflowed), and ``DataError`` when more than 1% of the split (``split_size``
    images) is unreadable. ``after_step(epoch_steps, global_steps)`` runs after every step with the steps of
    this epoch and of the run done so far (main.py: a failed background checkpoint write, a mid-epoch
    checkpoint); what it raises ends the epoch at once.
    """
    set_train_mode(model)
    total = start_step + (num_steps if num_steps is not None else len(loader) // config.accum_steps)
    batch_fmt = _batch_fmt(total)
    stepper = _Stepper(model, criterion, optimizer, scaler, precision, hooks or FaultHooks(), printer, device,
                       torch.channels_last if config.channels_last else torch.contiguous_format,
                       config.accum_steps, getattr(model, "no_sync", None))
    profiler = _StepProfiler(config.profile_path, _profiled_step(start_step, total, max_steps), device, printer)
    meter = _EpochMeter(device)
    stopped = False
    clock = _EpochClock(device)
    batches = iter(loader)
    for i in printer.bar(range(start_step, total), total - start_step, f"epoch {epoch}"):
        stepper.hooks.before_step(ctx.rank, global_step)
        lr = lr_at(epoch, i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        profiler.start(i)
        step = stepper.run(batches, i, global_step, meter.bad_paths)
        if step is None:  # the loader held fewer steps than expected: the epoch ends here
            break
        meter.add(step)
        profiler.stop(i)
        global_step += 1
        if after_step is not None:
            after_step(i + 1, global_step)
        clock.step_done(meter.steps, meter.images)

        limit_reached = max_steps is not None and meter.steps >= max_steps
        signalled = stop is not None and stop.requested
        if i % config.print_freq == 0 or i == total - 1 or limit_reached or (signalled and not ctx.distributed):
            printer.line(_progress_line(f"Epoch: [{epoch}]" + batch_fmt.format(i), step, meter, clock))
            if _agree_to_stop(meter, signalled, config, ctx, split_size, epoch, i):
                stopped = True
                break
        if limit_reached:
            break
    return _epoch_result(meter, clock, ctx, split_size, stopped, printer)


def _progress_line(head: str, step: _Step, meter: _EpochMeter, clock: _EpochClock) -> str:
    """Upstream's ``Epoch: [e][ i/N]\\tTime ...\\tData ...\\tLoss ...\\tAcc@1 ...\\tAcc@5 ...`` line (this rank)."""
    running = meter.running()
    step_time, average_time = clock.step_times(meter.steps)
    latest = meter.latest()
    mean_loss = running.loss_sum / running.finite_images if running.finite_images else float("nan")
    return "\t".join([
        head,
        _meter("Time", step_time, average_time, "6.3f"),
        _meter("Data", step.data_seconds, meter.data_seconds / meter.steps, "6.3f"),
        _meter("Loss", step.loss.item(), mean_loss, "6.8f"),
        _meter("Acc@1", 100.0 * latest.top1 / step.images, 100.0 * running.top1 / meter.images, "6.2f"),
        _meter("Acc@5", 100.0 * latest.top5 / step.images, 100.0 * running.top5 / meter.images, "6.2f"),
    ])


def _agree_to_stop(meter: _EpochMeter, signalled: bool, config: TrainConfig, ctx: DistContext, split_size: int,
                   epoch: int, step: int) -> bool:
    """What all ranks agree on at each print: whether to stop now (a signal on any rank); raises
    :class:`NonFiniteLossError` when any rank saw too many steps in a row that changed nothing, and ``DataError``
    when too much of the split is unreadable."""
    agreed = torch.tensor([float(signalled), float(meter.streak.item() >= config.max_nonfinite_steps),
                           float(len(meter.bad_paths))], device=meter.device)
    all_reduce_sum(agreed, ctx)
    check_bad_fraction("train", int(agreed[2].item()), split_size, meter.bad_paths)
    if agreed[1].item() > 0:
        raise NonFiniteLossError(_too_many_bad_steps(config.max_nonfinite_steps, epoch, step,
                                                     loss_finite=bool(meter.finite.item())))
    return agreed[0].item() > 0


def _epoch_result(meter: _EpochMeter, clock: _EpochClock, ctx: DistContext, split_size: int, stopped: bool,
                  printer: Printer) -> EpochResult:
    """Sum the epoch's figures over ranks into an :class:`EpochResult`, and print ``FPS@all``."""
    seconds, local_rate = clock.finish(meter.steps, meter.images)
    totals = torch.cat([meter.sums, torch.tensor([float(meter.images), float(len(meter.bad_paths)), local_rate],
                                                 device=meter.device)])
    all_reduce_sum(totals, ctx)
    values = totals.tolist()
    sums = _StepSums(*values[:len(_StepSums._fields)])
    images_all, bad_all, rate = values[len(_StepSums._fields):]
    check_bad_fraction("train", int(bad_all), split_size, meter.bad_paths)
    result = EpochResult(
        loss=sums.loss_sum / sums.finite_images if sums.finite_images else float("nan"),
        top1=100.0 * sums.top1 / images_all if images_all else float("nan"),
        top5=100.0 * sums.top5 / images_all if images_all else float("nan"),
        images_per_second=rate,  # every rank runs the same steps, so the global rate is the sum
        seconds=seconds, steps=meter.steps, images=int(images_all), skipped_images=int(bad_all),
        nonfinite_steps=int(sums.nonfinite_steps), skipped_steps=int(sums.skipped_steps) // max(1, ctx.world_size),
        stopped_by_signal=stopped)
    if meter.steps:  # a resumed epoch whose steps were all done before has no rate to report
        printer.line(f"{printer.npu_id} * FPS@all {result.images_per_second:.3f}")
    return result


def _skipped_by_scaler(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer,
                       device: torch.device) -> torch.Tensor:
    """Whether ``scaler.step(optimizer)`` just skipped the step (inf/NaN in the unscaled float16 gradients),
    as a device bool tensor; the scale alone cannot tell, since a static scale never moves."""
    found = scaler._found_inf_per_device(optimizer) if scaler.is_enabled() else {}  # filled by step()
    if not found:
        return torch.zeros((), dtype=torch.bool, device=device)
    return sum(f.to(device) for f in found.values()) > 0


def _too_many_bad_steps(limit: int, epoch: int, step: int, *, loss_finite: bool) -> str:
    """The one-line reason a run stops after ``limit`` consecutive steps that changed nothing."""
    if loss_finite:
        what = (f"the loss scaler has skipped {limit} or more consecutive steps because their float16 gradients "
                f"overflowed (inf/NaN) although the loss was finite")
        advice = "Try a smaller --loss-scale-value (or 'dynamic'), or a lower --lr"
    else:
        what = f"the loss has been non-finite (NaN/inf) for {limit} or more consecutive steps"
        advice = "Try a lower --lr, --loss-scale-value dynamic, or --warmup-epochs"
    return (f"{what} (epoch {epoch}, step {step}); stopping without saving, so the last checkpoint written is left "
            f"as it was. {advice} (--max-nonfinite-steps sets the limit).")


# ------------------------------------------------------------------------------------------- validate ---

@dataclass
class EvalResult:
    """Global (all-rank) validation metrics; every val image counted exactly once (unless ``stopped``)."""

    loss: float
    top1: float
    top5: float
    images: int
    skipped_images: int
    seconds: float
    stopped: bool = False  # a stop request cut the pass short (on any rank): the figures cover part of the set


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: Iterable, device: torch.device, *,
             precision: Precision, ctx: DistContext, printer: Printer, print_freq: int, split_size: int,
             channels_last: bool = False, stop: GracefulStop | None = None) -> EvalResult:
    """Validate on this rank's shard, then sum hits, loss and counts over ranks for global top-1/top-5.

    A ``stop`` request ends the pass at the next batch boundary (each rank on its own, so that a launcher's
    kill grace period is not spent validating); the result is then marked ``stopped`` on every rank and
    prints no ``[AVG-ACC]`` line.
    """
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    stats = torch.zeros(4, device=device)  # loss sum, images, top-1 hits, top-5 hits
    bad_paths: list[str] = []
    num_batches = len(loader)
    batch_fmt = _batch_fmt(num_batches)
    start = last = time.perf_counter()
    stopped = False
    for i, (images, target, bad) in enumerate(printer.bar(loader, num_batches, "validate")):
        if stop is not None and stop.requested:
            stopped = True
            break
        for item in bad:
            printer.warn(f"unreadable val image left out: {item}")
        bad_paths.extend(bad)
        if images.numel() == 0:
            continue
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        with precision.autocast():
            output = model(images)
        loss = criterion(output.float(), target)
        top1_hits, top5_hits = correct_counts(output, target)
        batch = images.shape[0]
        step = torch.stack([loss.float() * batch, torch.tensor(float(batch), device=device),
                            top1_hits.float(), top5_hits.float()])
        stats += step
        if i % print_freq == 0 and ctx.is_main:
            values, current = stats.tolist(), step.tolist()
            now = time.perf_counter()
            printer.line("\t".join([
                "Test: " + batch_fmt.format(i),
                _meter("Time", now - last, (now - start) / (i + 1), "6.3f"),
                _meter("Loss", current[0] / batch, values[0] / values[1], ".4e"),
                _meter("Acc@1", 100.0 * current[2] / batch, 100.0 * values[2] / values[1], "6.2f"),
                _meter("Acc@5", 100.0 * current[3] / batch, 100.0 * values[3] / values[1], "6.2f"),
            ]))
            last = now
    totals = torch.cat([stats, torch.tensor([float(len(bad_paths)), float(stopped)], device=device)])
    all_reduce_sum(totals, ctx)
    loss_sum, images, top1, top5, bad_all, stopped_ranks = totals.tolist()
    check_bad_fraction("val", int(bad_all), split_size, bad_paths)
    if stopped_ranks:
        printer.line(f"=> validation stopped by a signal after {int(images)} images; not counted")
        nan = float("nan")
        return EvalResult(nan, nan, nan, int(images), int(bad_all), time.perf_counter() - start, stopped=True)
    if images == 0:
        raise ValueError("validation saw no readable image")
    result = EvalResult(loss_sum / images, 100.0 * top1 / images, 100.0 * top5 / images, int(images),
                        int(bad_all), time.perf_counter() - start)
    printer.line(f"{printer.npu_id} [AVG-ACC] * Acc@1 {result.top1:.3f} Acc@5 {result.top5:.3f}")
    printer.line(f"=> validation loss {result.loss:.4f} over {result.images} images ({ctx.world_size} process(es), "
                 f"{result.skipped_images} unreadable left out)")
    return result
