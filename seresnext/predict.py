"""A model for inference from a weight file or a training checkpoint, and top-k classification of images.

Shared by ``demo.py`` and the ONNX export: whatever keys a checkpoint carries (``state_dict`` with or
without DDP's ``module.``, ``epoch``, ``best_acc1``, ``args``, ``classes``, ``class_names``), the model is
built with the right class count (read from ``last_linear.weight``) and the class names are found.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, apply_state_dict, load_checkpoint, state_dict_from
from .model import se_resnext50_32x4d
from .preprocess import CROP_SIZE, RESIZE_SIZE, preprocess_image

__all__ = ["CheckpointInfo", "read_checkpoint_info", "load_model", "class_names", "Prediction", "classify"]


@dataclass(frozen=True)
class CheckpointInfo:
    """What a weight file or a training checkpoint tells about the model, whatever keys it has."""

    path: str
    num_classes: int
    image_size: int | None = None
    epoch: int | None = None
    best_acc1: float | None = None
    classes: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    is_training_checkpoint: bool = False


def _plain_number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value if isinstance(value, (int, float)) else None


def _string_tuple(value: Any, count: int) -> tuple[str, ...] | None:
    if isinstance(value, (list, tuple)) and len(value) == count and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def read_checkpoint_info(path: str | PathLike, obj: Any = None) -> CheckpointInfo:
    """Inspect a Cadene ``.pth`` (bare state dict) or a ``model_best.pth.tar`` (dict with ``state_dict``).

    ``num_classes`` comes from ``last_linear.weight``; ``image_size``, ``classes`` and ``class_names`` are
    read when present (``args`` may be a dict or a namespace-like mapping) and ignored when malformed.
    """
    obj = load_checkpoint(path) if obj is None else obj
    state = state_dict_from(obj, path)
    weight = state.get("last_linear.weight")
    if weight is None or weight.ndim != 2:
        raise CheckpointError(f"{path}: no 'last_linear.weight' matrix: not an SE-ResNeXt50_32x4d weight file")
    num_classes = int(weight.shape[0])
    is_checkpoint = isinstance(obj, Mapping) and "state_dict" in obj
    meta: Mapping = obj if is_checkpoint else {}
    args = meta.get("args")
    args = args if isinstance(args, Mapping) else (vars(args) if hasattr(args, "__dict__") else {})
    image_size = _plain_number(args.get("image_size"))
    epoch, best = _plain_number(meta.get("epoch")), _plain_number(meta.get("best_acc1"))
    return CheckpointInfo(
        path=str(path), num_classes=num_classes,
        image_size=int(image_size) if image_size else None,
        epoch=int(epoch) if epoch is not None else None,
        best_acc1=float(best) if best is not None else None,
        classes=_string_tuple(meta.get("classes"), num_classes),
        class_names=_string_tuple(meta.get("class_names"), num_classes),
        is_training_checkpoint=is_checkpoint)


def load_model(path: str | PathLike) -> tuple[nn.Module, CheckpointInfo]:
    """The SE-ResNeXt50_32x4d of a weight file or checkpoint (any class count), in eval mode, on the CPU."""
    obj = load_checkpoint(path)
    info = read_checkpoint_info(path, obj)
    model = se_resnext50_32x4d(num_classes=info.num_classes)
    apply_state_dict(model, state_dict_from(obj, path), path)
    return model.eval(), info


def class_names(info: CheckpointInfo) -> list[str]:
    """Names for the model's outputs: the checkpoint's own, ImageNet's for 1000 classes, else the WNIDs."""
    if info.class_names:
        return list(info.class_names)
    if info.num_classes == 1000:
        from .imagenet import imagenet_class_names
        return imagenet_class_names()
    if info.classes:
        return list(info.classes)
    return [f"class {i}" for i in range(info.num_classes)]


@dataclass(frozen=True)
class Prediction:
    index: int
    name: str
    probability: float


def classify(model: nn.Module, image_paths: Sequence[str | PathLike], names: Sequence[str], topk: int = 5,
             device: torch.device | str = "cpu", crop: int = CROP_SIZE) -> list[list[Prediction]]:
    """Top-k softmax predictions per image, with the offline chain's preprocessing (resize, centre crop)."""
    resize = RESIZE_SIZE if crop == CROP_SIZE else int(round(crop / 0.875))
    batch = torch.from_numpy(np.stack([preprocess_image(p, resize=resize, crop=crop) for p in image_paths]))
    with torch.no_grad():
        probabilities = torch.softmax(model(batch.to(device)).float(), dim=1).cpu()
    k = min(topk, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    return [[Prediction(int(i), names[int(i)], float(v)) for v, i in zip(row_v, row_i)]
            for row_v, row_i in zip(values, indices)]
