"""Memory: what one training or evaluation step needs, what the device has, and what to do when it does not fit.

The estimate comes from a short probe on the real device, in the run's precision and memory format: one forward
pass at batch 1 and one at batch 2 (2 and 3 for images of 32 px or less, where BatchNorm needs two images) count
the bytes autograd keeps for the backward pass (its saved tensors, told apart by storage) and the largest
activation a layer puts out. Both grow by a fixed amount per image, so they scale to any batch. A step's peak
is then

* training: what the process holds now + gradients + optimizer state (+ DDP's gradient buckets) (+ on a CPU a
  checkpoint being written in the background and the loader's workers and prefetched batches) + the saved
  tensors + ``BACKWARD_LIVE`` largest activations per image (the gradients the backward pass holds at once);
* evaluation: what the process holds now (+ the loader) + ``EVAL_LIVE`` largest activations per image (only a
  few activations are alive at a time without autograd);
* both, under autocast: ``AUTOCAST_WEIGHT_COPIES`` low-precision copies of the weights.

The factors were fitted to peaks measured on a CPU (docs/training.md, "Memory"). Images larger than
:data:`PROBE_MAX_SIZE` are probed at that size and the per-image bytes scaled by the pixel count, so the probe
itself stays small. What the device has: on a CPU, MemAvailable (and a cgroup limit, and an address-space
limit set with ``ulimit -v``) shared by the node's processes; on cuda/npu, the device's free memory. A run is
refused when its estimate exceeds :data:`USABLE_FRACTION` of that.
"""
from __future__ import annotations

import contextlib
import math
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .devices import Precision
from .distributed import DistContext, all_reduce_max
from .errors import first_line
from .engine import set_train_mode

__all__ = ["BACKWARD_LIVE", "EVAL_LIVE", "AUTOCAST_WEIGHT_COPIES", "USABLE_FRACTION", "PROBE_MAX_SIZE",
           "WORKER_BYTES", "GIB", "NotEnoughMemoryError", "ActivationProbe", "probe_activations", "Available",
           "proc_field", "cgroup_free", "available_memory", "RunShape", "StepMemory", "estimate_step_memory",
           "batch_advice", "smaller_batch_advice", "CheckResult", "check_step_memory", "gib", "peak_bytes",
           "is_out_of_memory", "explain_out_of_memory"]

GIB = 1024 ** 3
BACKWARD_LIVE = 3.0
"""Activation gradients a training step's backward pass holds at once besides the saved tensors, in units of the
largest activation (fitted on a CPU)."""
EVAL_LIVE = 5.0
"""Activations an evaluation step holds at once, in units of the largest one (fitted on a CPU)."""
AUTOCAST_WEIGHT_COPIES = 3
"""Low-precision copies of the weights under autocast besides the one autograd saves (the backward pass's weight
gradients before they are added to the float32 ones, the kernels' reordered weights; fitted on a CPU)."""
USABLE_FRACTION = 0.9
"""A run must fit in this fraction of the available memory: the rest is the margin for what the estimate misses
(other processes growing, the allocator's fragmentation, the first step's one-off buffers)."""
PROBE_MAX_SIZE = 64
"""Larger images are probed at this size and the per-image bytes scaled by the pixel count."""
WORKER_BYTES = 300 * 1024 ** 2
"""Host memory each data-loading worker process adds on its own (decoding, its copy of the file list)."""
PREFETCH_FACTOR = 2  # DataLoader's default: batches each worker keeps ready


class NotEnoughMemoryError(RuntimeError):
    """A step does not fit in the memory of the device (before the run: the estimate; during it: the allocator
    failed); the message gives the figures and the flags that make the run fit."""


# ------------------------------------------------------------------------------------------------ probe ---

@dataclass(frozen=True)
class ActivationProbe:
    """What a forward pass keeps per image: autograd's saved tensors, and the largest single activation."""

    saved_fixed: int  # saved bytes that do not grow with the batch (the weights' autocast copies)
    saved_per_image: int
    largest_per_image: int  # the largest output of one layer, per image


def _probe_batches(image_size: int) -> tuple[int, int]:
    # BatchNorm in training mode needs more than one value per channel: at 32 px or less the last stage's map is
    # 1x1, so the probe starts at two images there
    return (1, 2) if image_size > 32 else (2, 3)


def probe_activations(model: nn.Module, device: torch.device, image_size: int, precision: Precision, *,
                      channels_last: bool) -> ActivationProbe:
    """Run the two small forward passes described in the module docstring on ``model`` (the plain model, not
    DDP), leaving its weights, BatchNorm statistics and the random state as they were."""
    size = min(image_size, PROBE_MAX_SIZE)
    scale = (image_size / size) ** 2
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    measured = []
    try:
        set_train_mode(model)
        for batch in _probe_batches(size):
            measured.append(_forward_bytes(model, device, batch, size, precision, memory_format))
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        model.train(was_training)
    (b1, (saved1, largest1)), (b2, (saved2, largest2)) = zip(_probe_batches(size), measured)
    per_image = max(0, saved2 - saved1) // (b2 - b1)
    return ActivationProbe(saved_fixed=max(0, saved1 - b1 * per_image), saved_per_image=int(per_image * scale),
                           largest_per_image=int(max(largest1 / b1, largest2 / b2) * scale))


def _forward_bytes(model: nn.Module, device: torch.device, batch: int, size: int, precision: Precision,
                   memory_format: torch.memory_format) -> tuple[int, int]:
    """(bytes of the distinct storages autograd saves, bytes of the largest layer output) of one forward pass;
    the model's own weights and buffers, already in memory, are not counted as saved."""
    held = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}
    largest = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def record(_module, _inputs, output) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        images = torch.zeros(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), precision.autocast():
            output = model(images)
        del output
    finally:
        for handle in handles:
            handle.remove()
    return sum(saved.values()), largest


# ------------------------------------------------------------------------------------------- available ---

@dataclass(frozen=True)
class Available:
    """Memory this process may use: what it holds now plus its share of what is free."""

    held: int  # bytes this process holds now (CPU: resident set; cuda/npu: reserved by its allocator)
    free: int  # bytes it may still take
    source: str  # where ``free`` comes from, for the log line

    @property
    def total(self) -> int:
        return self.held + self.free


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def proc_field(path: str | Path, key: str) -> int | None:
    """A ``Key:  N kB`` field of a /proc file (``/proc/meminfo``, ``/proc/<pid>/status``, ``smaps_rollup``) in
    bytes; None when the file or the field is missing (e.g. the process has exited)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_free(root: Path = Path("/sys/fs/cgroup"), cgroup_file: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes left under this process's cgroup memory limits (v2, every level up to the root; or v1), if any."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return None
    free = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            folder = root / path.lstrip("/")
            while True:
                limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
                if limit is not None and used is not None:
                    free.append(limit - used)
                if folder == root or root not in folder.parents:
                    break
                folder = folder.parent
        elif "memory" in controllers.split(","):  # cgroup v1
            folder = root / "memory" / path.lstrip("/")
            limit = _read_int(folder / "memory.limit_in_bytes")
            used = _read_int(folder / "memory.usage_in_bytes")
            if limit is not None and used is not None and limit < 2 ** 60:
                free.append(limit - used)
    return max(0, min(free)) if free else None


def available_memory(device: torch.device, processes_here: int = 1) -> Available | None:
    """What this process may use on ``device``; ``processes_here`` processes of the run share a CPU's memory.
    None when the device cannot tell (an npu without ``mem_get_info``)."""
    if device.type == "cpu":
        held = proc_field("/proc/self/status", "VmRSS") or 0
        shares = {"MemAvailable": proc_field("/proc/meminfo", "MemAvailable"), "cgroup limit": cgroup_free()}
        known = {k: v for k, v in shares.items() if v is not None}
        if not known:
            return None
        source = min(known, key=known.get)
        free = known[source] // max(1, processes_here)
        if processes_here > 1:
            source += f" / {processes_here} processes"
        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            address_free = max(0, soft - (proc_field("/proc/self/status", "VmSize") or 0))
            if address_free < free:
                free, source = address_free, "address-space limit (ulimit -v)"
        return Available(held, free, source)
    module = getattr(torch, device.type, None)
    if module is None or not hasattr(module, "mem_get_info"):
        return None
    free, _total = module.mem_get_info(device)
    held = module.memory_reserved(device) if hasattr(module, "memory_reserved") else 0
    return Available(held, free, f"free {device.type} memory")


# -------------------------------------------------------------------------------------------- estimate ---

@dataclass(frozen=True)
class RunShape:
    """What a step's memory depends on besides the model and the precision: set once per run by main.py."""

    batch: int  # images per process in one forward pass (a micro-batch; validation uses the same)
    image_size: int  # the largest train crop of the run
    eval_size: int  # the val crop
    workers: int  # data-loading worker processes of this process
    optimizer_states: int  # tensors per parameter the optimizer keeps (SGD with momentum: 1, AdamW: 2)
    distributed: bool  # DDP keeps its own copy of the gradients (buckets)
    evaluate_only: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class StepMemory:
    """Peak memory of one training and one evaluation step as ``fixed + per_image x batch`` (bytes)."""

    held: int  # already in use by this process at the estimate
    train_fixed: int  # on top of ``held``, whatever the batch
    train_per_image: int
    eval_fixed: int
    eval_per_image: int
    evaluate_only: bool

    def train_bytes(self, batch: int) -> int:
        return self.held + self.train_fixed + self.train_per_image * batch

    def eval_bytes(self, batch: int) -> int:
        return self.held + self.eval_fixed + self.eval_per_image * batch

    def peak(self, batch: int) -> int:
        """The run's peak at ``batch`` images per process (validation uses the training batch)."""
        return self.eval_bytes(batch) if self.evaluate_only else max(self.train_bytes(batch), self.eval_bytes(batch))

    def largest_batch(self, limit: int) -> int:
        """The largest batch (train and eval at the same size) whose peak stays within ``limit`` bytes; 0 if
        not even one image fits."""
        terms = [(self.eval_fixed, self.eval_per_image)]
        if not self.evaluate_only:
            terms.append((self.train_fixed, self.train_per_image))
        fits = []
        for fixed, per_image in terms:
            room = limit - self.held - fixed
            if room < 0:
                return 0
            fits.append(room // per_image if per_image > 0 else 2 ** 31)
        return int(min(fits))


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_step_memory(model: nn.Module, device: torch.device, precision: Precision, shape: RunShape, *,
                         held: int) -> StepMemory:
    """The peak of one training and one evaluation step of ``model`` for ``shape`` (see the module docstring),
    on top of the ``held`` bytes the process holds now."""
    train_probe = probe_activations(model, device, shape.image_size, precision, channels_last=shape.channels_last)
    eval_probe = train_probe if shape.eval_size == shape.image_size else \
        probe_activations(model, device, shape.eval_size, precision, channels_last=shape.channels_last)
    trainable = _tensor_bytes(p for p in model.parameters() if p.requires_grad)
    state = _tensor_bytes(model.state_dict().values())
    on_host = device.type == "cpu"
    image_bytes = 3 * 4  # a float32 RGB pixel, as the loader delivers it
    loader = shape.workers * WORKER_BYTES if on_host else 0
    prefetch_train = shape.workers * PREFETCH_FACTOR * image_bytes * shape.image_size ** 2 if on_host else 0
    prefetch_eval = shape.workers * PREFETCH_FACTOR * image_bytes * shape.eval_size ** 2 if on_host else 0
    optimizer = shape.optimizer_states * trainable
    # the background checkpoint writer: a snapshot of model and optimizer, and its serialised copy
    checkpoint = 2 * (state + optimizer) if on_host else 0
    low_precision = precision.dtype.itemsize if precision.enabled else 0
    weight_copies = AUTOCAST_WEIGHT_COPIES * low_precision * sum(p.numel() for p in model.parameters())
    train_fixed = (trainable * (1 + int(shape.distributed)) + optimizer + checkpoint + loader + weight_copies +
                   train_probe.saved_fixed)
    # a frozen backbone saves next to nothing, and its forward pass then holds what evaluation holds
    train_per_image = int(max(train_probe.saved_per_image + BACKWARD_LIVE * train_probe.largest_per_image,
                              EVAL_LIVE * train_probe.largest_per_image)) + prefetch_train
    eval_per_image = int(EVAL_LIVE * eval_probe.largest_per_image) + prefetch_eval
    # evaluation during training runs with gradients freed but the optimizer state (and a checkpoint) kept
    eval_fixed = loader + weight_copies + (0 if shape.evaluate_only else optimizer + checkpoint)
    return StepMemory(held, train_fixed, train_per_image, eval_fixed, eval_per_image, shape.evaluate_only)


# -------------------------------------------------------------------------------------------- advice ---

def batch_advice(batch_size: int, accum_steps: int, processes_here: int, largest_per_process: int) -> str:
    """The flags to use instead of ``-b batch_size --accum-steps accum_steps`` (``-b`` is for the node, split
    over its processes) when at most ``largest_per_process`` images fit in one process: the smallest
    accumulation that keeps the images per optimizer step (or comes closest to them)."""
    per_process = max(1, batch_size // processes_here)
    wanted = per_process * accum_steps  # images per optimizer step and process
    if largest_per_process < 1:
        return (f"not even -b {processes_here} (1 image per process) fits: use a smaller --image-size, --amp, or "
                f"a device with more memory")
    steps = max(accum_steps, math.ceil(wanted / largest_per_process))
    for k in range(steps, wanted + 1):
        if 2 * (wanted // k) < min(largest_per_process, wanted // steps):
            break  # an exact split would take batches less than half as large as fit: take the closest instead
        if wanted % k == 0:
            return (f"-b {wanted // k * processes_here} --accum-steps {k} keeps the {wanted * processes_here} "
                    f"images per optimizer step")
    micro = max(1, wanted // steps)
    return (f"-b {micro * processes_here} --accum-steps {steps} makes {micro * steps * processes_here} images per "
            f"optimizer step (the closest to {wanted * processes_here})")


def smaller_batch_advice(batch_size: int, accum_steps: int, processes_here: int, largest_per_process: int) -> str:
    """The advice an out-of-memory error during the run gets (``largest_per_process``: at most half the batch
    that failed)."""
    return f"use a smaller batch: {batch_advice(batch_size, accum_steps, processes_here, max(1, largest_per_process))}"


@dataclass(frozen=True)
class CheckResult:
    line: str  # the "=> memory:" log line
    oom_advice: str  # for an out-of-memory error during the run nonetheless


def check_step_memory(model: nn.Module, device: torch.device, precision: Precision, shape: RunShape,
                      ctx: DistContext, *, batch_flag: int, accum_steps: int) -> CheckResult:
    """Estimate the peak of a step (:func:`estimate_step_memory`) and compare it with what this process may use
    (:func:`available_memory`, :data:`USABLE_FRACTION` of it). Raises :class:`NotEnoughMemoryError` with one
    line (the estimate, what is available, the largest ``-b`` that fits and the ``-b``/``--accum-steps`` that
    keep the images per optimizer step) when it does not fit; every rank decides alike, on the largest estimate
    and the smallest room. ``batch_flag`` and ``accum_steps`` are the command line's ``-b`` (for the node) and
    ``--accum-steps``."""
    per_process = ctx.local_world_size
    available = available_memory(device, per_process if device.type == "cpu" else 1)
    if available is None:
        return CheckResult(f"=> memory: {device.type} does not report its free memory; not checked",
                           smaller_batch_advice(batch_flag, accum_steps, per_process, shape.batch // 2))
    estimate = estimate_step_memory(model, device, precision, shape, held=available.held)
    need, minus_total = all_reduce_max(torch.tensor([float(estimate.peak(shape.batch)), -float(available.total)],
                                                    device=device), ctx).tolist()
    total = -minus_total
    limit = int(total * USABLE_FRACTION)
    largest = estimate.largest_batch(limit)
    dtype = str(precision.dtype or torch.float32).replace("torch.", "")
    step = (f"{'an evaluation' if shape.evaluate_only else 'a training'} step at -b {batch_flag} ({shape.batch} "
            f"images of {shape.image_size} px per process, {dtype}, "
            f"{'channels-last' if shape.channels_last else 'NCHW'}) needs about {gib(need)}"
            f"{f' with its {shape.workers} loader worker(s)' if shape.workers and device.type == 'cpu' else ''}")
    room = (f"{gib(total)} is available per process ({available.source}; the check keeps "
            f"{100 - round(100 * USABLE_FRACTION)}% of it free)")
    if need > limit:
        advice = batch_advice(batch_flag, accum_steps, per_process, largest)
        if largest < 1:
            raise NotEnoughMemoryError(f"not enough memory: {step}, but {room}; {advice}")
        raise NotEnoughMemoryError(f"not enough memory: {step}, but {room}; the largest -b that fits is "
                                   f"{largest * per_process}: {advice}; or pass --skip-memory-check to start anyway")
    return CheckResult(f"=> memory: {step}; {room}; the largest -b that fits is {largest * per_process}",
                       smaller_batch_advice(batch_flag, accum_steps, per_process, min(largest, shape.batch // 2)))


def gib(nbytes: float) -> str:
    """Bytes as GiB for log lines: two decimals below 10 GiB, one above."""
    value = nbytes / GIB
    return f"{value:.2f} GiB" if value < 10 else f"{value:.1f} GiB"


def peak_bytes(device: torch.device) -> int | None:
    """The most memory this process has held on ``device`` so far (CPU: peak resident set; cuda/npu: peak
    reserved by the allocator), comparable with :class:`StepMemory`'s figures; None if the device cannot tell."""
    if device.type == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    module = getattr(torch, device.type, None)
    return module.max_memory_reserved(device) if hasattr(module, "max_memory_reserved") else None


# --------------------------------------------------------------------------------------- out of memory ---

_OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "out of memory",
                "killed by signal: killed")  # a loader worker SIGKILLed: almost always the kernel's OOM killer


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's out-of-memory error (CPU, cuda, npu) rather than a bug."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)


@contextlib.contextmanager
def explain_out_of_memory(advice: str, where: str) -> Iterator[None]:
    """Turn an out-of-memory error raised in the block into :class:`NotEnoughMemoryError` with ``advice``."""
    try:
        yield
    except NotEnoughMemoryError:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        first = first_line(exc)
        raise NotEnoughMemoryError(f"out of memory {where} ({first}); {advice}") from None
