"""Devices (cpu / cuda / npu) and mixed precision.

``torch_npu`` is optional: it is imported only when installed, and only through :func:`npu_available`.
"""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from functools import cache

import torch

__all__ = ["npu_available", "import_device_backend", "cuda_available", "default_device_type", "normalize_device_type",
           "make_device", "device_count", "pins_memory", "synchronize", "dist_backend_for", "DEVICE_TYPES",
           "AMP_DTYPES", "OPT_LEVELS", "Precision", "StaticGradScaler", "BFLOAT16_MIN_SPEEDUP",
           "BFloat16Probe", "probe_cpu_bfloat16", "parse_loss_scale", "resolve_precision"]

DEVICE_TYPES = ("cpu", "cuda", "npu")


@cache
def npu_available() -> bool:
    """True when ``torch_npu`` is installed, imports (CANN present) and sees at least one device."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401
    except Exception:  # torch_npu without CANN fails in many ways
        return False
    return hasattr(torch, "npu") and torch.npu.is_available() and torch.npu.device_count() > 0


def import_device_backend(device_type: str) -> None:
    """Import ``torch_npu`` (when installed) for npu, in every process before its device is set up.

    A spawned worker starts a fresh interpreter, and torch imports ``torch_npu`` there by itself only through its
    device-backend autoload, which ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` turns off: without the import, neither
    ``torch.npu`` nor the hccl backend exists."""
    if device_type == "npu" and importlib.util.find_spec("torch_npu") is not None:
        importlib.import_module("torch_npu")


def cuda_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def default_device_type() -> str:
    """npu if usable, else cuda, else cpu."""
    if npu_available():
        return "npu"
    if cuda_available():
        return "cuda"
    return "cpu"


def normalize_device_type(name: str | None) -> str:
    """Map a ``--device`` value to cpu / cuda / npu (``gpu`` means cuda; ``None`` or ``auto`` picks)."""
    if name is None or name == "auto":
        return default_device_type()
    name = name.lower()
    if name == "gpu":
        name = "cuda"
    if name not in DEVICE_TYPES:
        raise ValueError(f"--device {name!r}: expected one of cpu, cuda, gpu, npu")
    if name == "npu" and not npu_available():
        raise ValueError("--device npu: torch_npu is not installed or sees no Ascend device")
    if name == "cuda" and not cuda_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    return name


def device_count(device_type: str) -> int:
    if device_type == "cuda":
        return torch.cuda.device_count()
    if device_type == "npu":
        return torch.npu.device_count() if npu_available() else 0
    return os.cpu_count() or 1


def make_device(device_type: str, index: int | None = None) -> torch.device:
    """A ``torch.device``; also makes it current for cuda / npu so that collectives use it."""
    if device_type == "cpu":
        return torch.device("cpu")
    index = 0 if index is None else index
    if device_type == "cuda":
        torch.cuda.set_device(index)
    elif device_type == "npu":
        torch.npu.set_device(index)
    return torch.device(device_type, index)


def pins_memory(device_type: str) -> bool:
    """Whether the loaders pin their batches: on an accelerator (cuda, npu), so that the ``non_blocking`` copies
    to it overlap with compute (a copy from pageable memory waits for the host); the DataLoader pins for the
    current accelerator."""
    return device_type in ("cuda", "npu")


def synchronize(device: torch.device) -> None:
    """Wait for queued work, so timings measure the device and not the queue."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)


def dist_backend_for(device_type: str) -> str:
    return {"npu": "hccl", "cuda": "nccl"}.get(device_type, "gloo")


# ---------------------------------------------------------------------------------------------------------
# Mixed precision: upstream's apex flags (--amp --opt-level --loss-scale-value) mapped onto torch.amp.
# ---------------------------------------------------------------------------------------------------------

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
OPT_LEVELS = ("O0", "O1", "O2", "O3")


BFLOAT16_MIN_SPEEDUP = 1.2
"""``--amp`` on a CPU runs bfloat16 only when a bfloat16 convolution is at least this much faster than float32."""


@dataclass(frozen=True)
class BFloat16Probe:
    """What this process's oneDNN really does with bfloat16: the speed of a bfloat16 convolution over float32's.

    CPU flags cannot tell: a VM can hide them, ``ONEDNN_MAX_CPU_ISA`` can cap what oneDNN uses, and
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is true wherever bfloat16 merely runs (emulated on plain
    AVX-512, at less than half the float32 speed). Native bfloat16 (AVX512_BF16, AMX) runs about 2x float32.
    """

    speedup: float  # float32 time / bfloat16 time; 0 when bfloat16 convolutions are not available at all

    @property
    def native(self) -> bool:
        return self.speedup >= BFLOAT16_MIN_SPEEDUP

    @property
    def measured(self) -> str:
        """What the probe found, for the precision line and the benchmarks' machine line."""
        if self.speedup == 0:
            return "oneDNN has no bfloat16 kernels for this CPU: it needs AVX-512"
        return f"a bfloat16 convolution ran {self.speedup:.2f}x as fast as float32 here"


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@cache
def probe_cpu_bfloat16() -> BFloat16Probe:
    """Time a small 1x1 convolution (channels-last, the model's commonest layer) in bfloat16 and in float32.

    Takes 20-60 ms, once per process, on one thread (so that other work on the cores cannot skew it).
    """
    if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return BFloat16Probe(0.0)  # no AVX-512 for oneDNN: bfloat16 runs through slow reference code
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 128, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 1, 1, generator=gen)
    xb, wb = x.bfloat16(), w.bfloat16()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: no waiting on a descheduled sibling when other work shares the cores
    try:
        return BFloat16Probe(_conv_speedup(x, w, xb, wb))
    finally:
        torch.set_num_threads(threads)


def _conv_speedup(x: torch.Tensor, w: torch.Tensor, xb: torch.Tensor, wb: torch.Tensor) -> float:
    with torch.no_grad():
        conv32 = lambda: torch.nn.functional.conv2d(x, w)  # noqa: E731
        conv16 = lambda: torch.nn.functional.conv2d(xb, wb)  # noqa: E731
        conv32(), conv16()  # oneDNN builds (JIT-compiles) its kernels on the first call
        times32, times16 = [], []
        for _ in range(4):  # alternate, so a burst of load elsewhere hits both alike
            times32.append(_best_time(conv32, 3))
            times16.append(_best_time(conv16, 3))
    return min(times32) / max(min(times16), 1e-9)


def parse_loss_scale(value: str | float | int | None) -> float | None:
    """``--loss-scale-value``: a positive number is a static scale, ``dynamic`` (or None) a dynamic one."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "dynamic"):
        return None
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--loss-scale-value {value!r}: expected a positive number or 'dynamic'") from None
    if not scale > 0 or scale == float("inf"):
        raise ValueError(f"--loss-scale-value {value!r}: expected a positive number or 'dynamic'")
    return scale


class StaticGradScaler(torch.amp.GradScaler):
    """A GradScaler whose scale never moves: apex's static ``loss_scale``.

    Steps whose gradients hold inf/NaN are still skipped (unlike apex's static mode, which applied them).
    """

    def __init__(self, device: str, scale: float):
        super().__init__(device, init_scale=scale)
        self.static_scale = float(scale)

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        super().update(self.static_scale if new_scale is None else new_scale)


@dataclass(frozen=True)
class Precision:
    """How a step runs: the autocast dtype (None: plain fp32) and, for float16, the loss scaling.

    Parameters, gradients, optimizer state and BatchNorm statistics always stay float32: autocast only runs
    selected ops (convolutions, matmuls) in the low-precision dtype, which is what apex O1 did and what O2's
    "keep BatchNorm in fp32" asked for.
    """

    device_type: str
    dtype: torch.dtype | None = None
    loss_scale: float | None = None  # static scale; None means dynamic (only used with float16)
    note: str = field(default="", compare=False)  # why this precision, when it was chosen for the hardware
    probed: bool = field(default=False, compare=False)  # chosen by probe_cpu_bfloat16 (``--amp`` on a cpu)

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def uses_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> torch.autocast:
        """The autocast context for forward passes (a no-op context when AMP is off)."""
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.enabled)

    def make_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler: static or dynamic for float16, disabled (a pass-through) otherwise."""
        if not self.uses_scaler:
            return torch.amp.GradScaler(self.device_type, enabled=False)
        if self.loss_scale is not None:
            return StaticGradScaler(self.device_type, self.loss_scale)
        return torch.amp.GradScaler(self.device_type)

    def describe(self) -> str:
        """The ``=> precision:`` log line's text."""
        if not self.enabled:
            return f"float32 ({self.note or 'AMP off'})"
        name = str(self.dtype).replace("torch.", "")
        if not self.uses_scaler:
            text = f"autocast {name} on {self.device_type}, no loss scaling"
        else:
            scale = "dynamic" if self.loss_scale is None else f"static {self.loss_scale:g}"
            text = f"autocast {name} on {self.device_type}, {scale} loss scale"
        return f"{text} ({self.note})" if self.note else text


def resolve_precision(device_type: str, amp: bool, opt_level: str | None = None, amp_dtype: str | None = None,
                      loss_scale_value: str | float | None = None) -> Precision:
    """Map upstream's apex flags to :class:`Precision`.

    ``--amp`` with ``--opt-level`` O1/O2/O3 (or none) turns on autocast; O0 keeps fp32, as in apex. On cuda/npu
    the dtype is float16 with a GradScaler: static when ``--loss-scale-value`` is a number, dynamic for
    ``dynamic``. On a CPU it is bfloat16 only where :func:`probe_cpu_bfloat16` finds native bfloat16; elsewhere
    bfloat16 would be emulated and slower than float32, so ``--amp`` runs float32 and the note says why.
    ``--amp-dtype`` names the dtype whatever the hardware (and turns AMP on).
    """
    if opt_level is not None and opt_level not in OPT_LEVELS:
        raise ValueError(f"--opt-level {opt_level!r}: expected one of {', '.join(OPT_LEVELS)}")
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise ValueError(f"--amp-dtype {amp_dtype!r}: expected float16 or bfloat16")
    loss_scale = parse_loss_scale(loss_scale_value)
    if not (amp or amp_dtype) or opt_level == "O0":
        return Precision(device_type)
    if amp_dtype:
        dtype = AMP_DTYPES[amp_dtype]
        return Precision(device_type, dtype, loss_scale if dtype == torch.float16 else None, note="--amp-dtype")
    if device_type != "cpu":
        return Precision(device_type, torch.float16, loss_scale)
    probe = probe_cpu_bfloat16()
    measured = probe.measured
    if probe.native:
        return Precision("cpu", torch.bfloat16, note=f"--amp: native bfloat16, {measured}", probed=True)
    return Precision("cpu", probed=True, note=f"--amp: this CPU has no native bfloat16; bfloat16 would be emulated "
                                              f"and slower ({measured}; --amp-dtype bfloat16 forces it)")
