"""What the runner feeds the model: the flags checked against the model's input (:func:`plan_input`), and
each listed file turned into one image's input (:func:`input_loader`): a ``.bin`` / ``.npy`` as is, or with
DVPP emulation a JPEG decoded, resized and encoded as the model's AIPP config expects (:func:`encode_source`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .aipp_config import AippConfig, config_from_metadata
from .backends import AscendBackend, Backend
from .formats import InfoEntry, bin_from_bytes, npy_from_bytes
from .runner_options import RunnerError, RunnerOptions

__all__ = ["InputPlan", "plan_input", "input_loader", "encode_source"]


# ----------------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class InputPlan:
    batch: int  # images per model call
    static_batch: bool
    item_shape: tuple[int, ...]  # one image's input
    aipp: AippConfig | None


def plan_input(backend: Backend, options: RunnerOptions, pure: bool = False) -> InputPlan:
    """Check the flags against the model; errors name the flag and the model's real shape."""
    if options.model_type != "vision":
        raise RunnerError(f"-model_type={options.model_type}: only vision is supported")
    if options.batch_size < 1:
        raise RunnerError(f"-batch_size={options.batch_size}: must be at least 1")
    shape, model = backend.input_shape, options.om_path
    shape_text = "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    aipp = config_from_metadata(backend.metadata)
    if backend.input_dtype == np.uint8 and aipp is None and not isinstance(backend, AscendBackend):
        raise RunnerError(f"-om_path={model}: uint8 input {backend.input_name}{shape_text} but no AIPP config "
                          f"recorded in the model; build it with se_resnext50_32x4d_atc.sh")
    is_aipp = backend.input_dtype == np.uint8
    if not pure:
        if options.use_dvpp and not is_aipp:
            raise RunnerError(f"-useDvpp=true needs a model with AIPP (built with --insert_op_conf, e.g. "
                              f"seresnext50_32x4d_aipp_16.onnx); {model} takes float32 "
                              f"{backend.input_name}{shape_text}: use -useDvpp=false with .bin files")
        if not options.use_dvpp and is_aipp:
            raise RunnerError(f"{model} has AIPP (uint8 input {backend.input_name}{shape_text}): it takes "
                              f"decoded images, so run it with -useDvpp=true and a jpg .info")
    if shape[0] is not None and shape[0] != options.batch_size:
        raise RunnerError(f"-batch_size={options.batch_size} but {model} has a static batch of {shape[0]} "
                          f"(input {backend.input_name}{shape_text}); pass -batch_size={shape[0]} or build "
                          f"the model for batch {options.batch_size}")
    width, height = options.input_width, options.input_height
    if pure and aipp is not None:  # pure inference takes the sizes from the model, as benchmark.x86_64 -round does
        width, height = aipp.src_image_size_w, aipp.src_image_size_h
    elif pure and len(shape) == 4 and None not in (shape[2], shape[3]):
        height, width = shape[2], shape[3]
    if aipp is not None:
        if (aipp.src_image_size_w, aipp.src_image_size_h) != (width, height):
            raise RunnerError(f"-input_width={width} -input_height={height} do not match {model}: its AIPP "
                              f"input is {aipp.src_image_size_w}x{aipp.src_image_size_h} "
                              f"({backend.input_name}{shape_text})")
        item = tuple(aipp.input_shape(1)[1:])
    elif is_aipp:  # an .om with AIPP: the shape is all we know
        item = tuple(d or 0 for d in shape[1:])
    else:
        if len(shape) != 4 or shape[1] not in (3, None):
            raise RunnerError(f"{model}: input {backend.input_name}{shape_text} is not NCHW images")
        if (shape[2], shape[3]) != (height, width) and None not in (shape[2], shape[3]):
            raise RunnerError(f"-input_width={width} -input_height={height} do not match {model}: its input "
                              f"is {backend.input_name}{shape_text} (width {shape[3]}, height {shape[2]})")
        item = (3, height, width)
    return InputPlan(options.batch_size, shape[0] is not None, item, aipp)


# ----------------------------------------------------------------------------------------------- loading
def input_loader(plan: InputPlan, use_dvpp: bool) -> Callable[[InfoEntry], tuple[np.ndarray, float, float]]:
    """entry -> (model input for one image, seconds reading, seconds preprocessing)."""
    def load_bin(entry: InfoEntry) -> tuple[np.ndarray, float, float]:
        started = time.perf_counter()
        data = Path(entry.path).read_bytes()
        read = time.perf_counter()
        decode = npy_from_bytes if entry.path.lower().endswith(".npy") else bin_from_bytes
        array = decode(data, plan.item_shape, entry.path)
        return array, read - started, time.perf_counter() - read

    def load_jpeg(entry: InfoEntry) -> tuple[np.ndarray, float, float]:
        from PIL import Image

        from .preprocess import load_rgb

        started = time.perf_counter()
        data = Path(entry.path).read_bytes()
        read = time.perf_counter()
        config = plan.aipp
        image = load_rgb(entry.path, data)
        size = (config.src_image_size_w, config.src_image_size_h)
        if image.size != size:
            image = image.resize(size, Image.BILINEAR)
        array = encode_source(config, np.asarray(image))
        return array, read - started, time.perf_counter() - read

    if use_dvpp and plan.aipp is None:
        raise RunnerError("-useDvpp=true with an .om: DVPP emulation needs the AIPP config recorded by the "
                          "ONNX build; run the .om with Ascend's benchmark tool instead")
    return load_jpeg if use_dvpp else load_bin


# ----------------------------------------------------------------------------------------------- DVPP source encoding
def encode_source(config: AippConfig, rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 image ``(src_h, src_w, 3)`` -> the uint8 buffer (without batch axis) the config expects.

    The inverse of the config: the CSC is undone with the inverse of its matrix (for the standard matrix
    that is BT.601 full-range RGB->YUV), chroma is averaged over 2x2 blocks for YUV420SP, and the channels
    are put in the order the config's swap turns back into the right one.
    """
    h, w = config.src_image_size_h, config.src_image_size_w
    if rgb.shape != (h, w, 3):
        raise ValueError(f"the image is {rgb.shape[1]}x{rgb.shape[0]}, the AIPP input is {w}x{h}")
    order = np.argsort(config.swap_order())  # the swap is its own inverse; argsort keeps this explicit
    planes = rgb.transpose(2, 0, 1).astype(np.float32)  # (3, h, w)
    if config.input_format == "RGB888_U8":
        return np.ascontiguousarray(_undo_csc(config, planes, range(3))[order].transpose(1, 2, 0))
    # Y at full resolution; chroma from 2x2-averaged RGB (the conversion is linear, so this equals
    # averaging the converted chroma, at a quarter of the work).
    luma = _undo_csc(config, planes, [0])[0]
    blocks = (planes[:, 0::2, 0::2] + planes[:, 1::2, 0::2] + planes[:, 0::2, 1::2] + planes[:, 1::2, 1::2]) * 0.25
    chroma = _undo_csc(config, blocks, [2, 1] if config.rbuv_swap_switch else [1, 2])  # (2, h/2, w/2)
    return np.concatenate([luma, chroma.transpose(1, 2, 0).reshape(h // 2, w)], axis=0)


def _undo_csc(config: AippConfig, planes: np.ndarray, rows) -> np.ndarray:
    """Target planes ``(3, h, w)`` float32 -> the chosen planes of the pre-CSC buffer, as uint8."""
    if not config.csc_switch:
        return np.clip(np.rint(planes[list(rows)]), 0, 255).astype(np.uint8)
    inverse = np.linalg.inv(np.array(config.matrix, dtype=np.float64) / 256.0).astype(np.float32)
    targets = [planes[c] - np.float32(config.output_bias[c]) if config.output_bias[c] else planes[c]
               for c in range(3)]
    out = []
    for row in rows:
        value = (inverse[row, 0] * targets[0] + inverse[row, 1] * targets[1] + inverse[row, 2] * targets[2]
                 + np.float32(config.input_bias[row]))
        out.append(np.clip(np.rint(value, out=value), 0, 255, out=value).astype(np.uint8))
    return np.stack(out)
