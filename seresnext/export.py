"""Weight file or training checkpoint -> checked ONNX model.

The export uses TorchScript-based ``torch.onnx.export(..., dynamo=False)``: torch 2.14's default (dynamo)
exporter cannot write opset 11 and silently writes opset 18, which Ascend's ``atc`` rejects. Every export is
then verified before anything is written: the opset is the one asked for, ``onnx.checker`` passes (full
check, with shape inference), and ONNX Runtime's logits on a seeded random batch match torch's within
``atol``. Only then is the file written, atomically.
"""
from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .aipp import onnx_opset
from .formats import atomic_write
from .predict import CheckpointInfo, load_model, read_checkpoint_info

__all__ = ["ExportError", "ExportReport", "export_onnx", "checkpoint_metadata", "onnx_opset", "DEFAULT_OPSET",
           "DYNAMIC_BATCH", "load_model", "read_checkpoint_info"]

DEFAULT_OPSET = 11
DYNAMIC_BATCH = "-1"  # upstream's name for the dynamic batch axis


class ExportError(RuntimeError):
    """The exported model failed a check (opset, checker, or ONNX Runtime disagrees with torch)."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` verified."""

    path: str
    opset: int
    input_shape: list[int | str]
    max_abs_diff: float
    check_batch: int
    metadata: dict[str, str] = field(default_factory=dict)


def export_onnx(model: nn.Module, out_path: str | PathLike, *, input_name: str, output_name: str,
                batch_size: int | None, image_size: int = 224, opset: int = DEFAULT_OPSET,
                atol: float = 1e-4, check_batch: int = 2,
                metadata: Mapping[str, str] | None = None) -> ExportReport:
    """Export ``model`` (static ``batch_size``, or a dynamic batch axis when None), verify it, write it.

    Raises :class:`ExportError` (and writes nothing) when the opset differs from ``opset``, the checker
    fails, or ONNX Runtime's outputs differ from torch's by more than ``atol``.
    """
    import onnxruntime as ort

    model = model.eval()
    export_batch = batch_size or 1
    dummy = torch.zeros(export_batch, 3, image_size, image_size)
    dynamic_axes = None if batch_size else {input_name: {0: DYNAMIC_BATCH}, output_name: {0: DYNAMIC_BATCH}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; dynamo can't do 11
        torch.onnx.export(model, (dummy,), buffer, input_names=[input_name], output_names=[output_name],
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    written_opset = onnx_opset(proto)
    if written_opset != opset:
        raise ExportError(f"{out_path}: the exporter wrote opset {written_opset}, not the requested {opset}")
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{out_path}: onnx.checker rejects the exported model: {exc}") from None

    batch = batch_size or check_batch
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, 3, image_size, image_size, generator=generator)
    with torch.no_grad():
        expected = model(sample).numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    actual = session.run([output_name], {input_name: sample.numpy()})[0]
    max_abs_diff = float(np.abs(actual - expected).max())
    if not np.isfinite(max_abs_diff) or max_abs_diff > atol:
        raise ExportError(f"{out_path}: ONNX Runtime and torch disagree on a random batch of {batch}: "
                          f"max abs diff {max_abs_diff:.3g} > {atol:g}; nothing was written")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, data)
    shape = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return ExportReport(str(out_path), written_opset, shape, max_abs_diff, batch,
                        {p.key: p.value for p in proto.metadata_props})


def checkpoint_metadata(info: CheckpointInfo) -> dict[str, str]:
    """ONNX metadata recording where the weights came from and, when known, the class names."""
    metadata = {"seresnext.source": Path(info.path).name, "seresnext.num_classes": str(info.num_classes)}
    if info.classes:
        metadata["seresnext.classes"] = json.dumps(list(info.classes))
    if info.class_names:
        metadata["seresnext.class_names"] = json.dumps(list(info.class_names))
    return metadata


def add_export_arguments(parser) -> None:
    """The flags both export scripts share: ``--opset``, ``--image-size``, ``--atol``."""
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input height and width (default: the checkpoint's, else 224)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest ONNX Runtime vs torch difference accepted (default %(default)g)")


def export_checkpoint(checkpoint: str | PathLike, out_path: str | PathLike, args, *, input_name: str,
                      output_name: str, batch_size: int | None, prog: str) -> ExportReport:
    """Load a checkpoint or weight file, export it with the shared flags in ``args``, print one summary line."""
    model, info = load_model(checkpoint)
    report = export_onnx(model, out_path, input_name=input_name, output_name=output_name, batch_size=batch_size,
                         image_size=args.image_size or info.image_size or 224, opset=args.opset, atol=args.atol,
                         metadata=checkpoint_metadata(info))
    epoch = f", epoch {info.epoch}" if info.epoch is not None else ""
    print(f"{prog}: {checkpoint} ({info.num_classes} classes{epoch}) -> {report.path}: opset {report.opset}, "
          f"input {input_name}{report.input_shape}, onnx checker ok, ONNX Runtime vs torch max abs diff "
          f"{report.max_abs_diff:.3g} (batch {report.check_batch})")
    return report
