"""Devices (cpu / cuda / npu) and mixed precision.

``torch_npu`` is optional: it is imported only when installed, and only through :func:`npu_available`.
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import torch

__all__ = ["npu_available", "cuda_available", "default_device_type", "normalize_device_type",
           "make_device", "device_count", "synchronize", "dist_backend_for", "DEVICE_TYPES"]

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
