"""Devices (cpu / cuda / npu) and mixed precision.

``torch_npu`` is optional: it is imported only when installed, and only through :func:`npu_available`.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = ["npu_available", "cuda_available", "default_device_type", "normalize_device_type",
           "make_device", "device_count", "synchronize", "dist_backend_for", "DEVICE_TYPES",
           "AMP_DTYPES", "OPT_LEVELS", "Precision", "StaticGradScaler", "default_amp_dtype", "parse_loss_scale",
           "resolve_precision"]

DEVICE_TYPES = ("cpu", "cuda", "npu")


@lru_cache(maxsize=None)
def npu_available() -> bool:
    """True when ``torch_npu`` is installed, imports (CANN present) and sees at least one device."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401
    except Exception:  # torch_npu without CANN fails in many ways
        return False
    return hasattr(torch, "npu") and torch.npu.is_available() and torch.npu.device_count() > 0


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


def default_amp_dtype(device_type: str) -> torch.dtype:
    """float16 where the hardware has fast fp16 with loss scaling (cuda, npu); bfloat16 on cpu."""
    return torch.bfloat16 if device_type == "cpu" else torch.float16


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
        if not self.enabled:
            return "float32 (AMP off)"
        name = str(self.dtype).replace("torch.", "")
        if not self.uses_scaler:
            return f"autocast {name} on {self.device_type}, no loss scaling"
        scale = "dynamic" if self.loss_scale is None else f"static {self.loss_scale:g}"
        return f"autocast {name} on {self.device_type}, {scale} loss scale"


def resolve_precision(device_type: str, amp: bool, opt_level: str | None = None, amp_dtype: str | None = None,
                      loss_scale_value: str | float | None = None) -> Precision:
    """Map upstream's apex flags to :class:`Precision`.

    ``--amp`` with ``--opt-level`` O1/O2/O3 (or none) turns on autocast; O0 keeps fp32, as in apex. The dtype
    follows the device (float16 on cuda/npu, bfloat16 on cpu) unless ``--amp-dtype`` names one, which also
    turns AMP on. float16 gets a GradScaler: static when ``--loss-scale-value`` is a number, dynamic for
    ``dynamic``.
    """
    if opt_level is not None and opt_level not in OPT_LEVELS:
        raise ValueError(f"--opt-level {opt_level!r}: expected one of {', '.join(OPT_LEVELS)}")
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise ValueError(f"--amp-dtype {amp_dtype!r}: expected float16 or bfloat16")
    loss_scale = parse_loss_scale(loss_scale_value)
    if not (amp or amp_dtype) or opt_level == "O0":
        return Precision(device_type)
    dtype = AMP_DTYPES[amp_dtype] if amp_dtype else default_amp_dtype(device_type)
    return Precision(device_type, dtype, loss_scale if dtype == torch.float16 else None)
