"""Ascend AIPP (static mode) without Ascend: the config parser, and the AIPP compiled into ONNX operators.

On Ascend, ``atc --insert_op_conf=<config>`` puts an AIPP stage in front of the model: it takes the
uint8 image DVPP hands over and does, in this order (CANN's AIPP pipeline), the crop, the channel swap,
the colour-space conversion (CSC) and the normalisation ("DTC")::

    crop:   rows load_start_pos_h .. +crop_size_h, columns load_start_pos_w .. +crop_size_w
    swap:   rbuv_swap_switch swaps U and V (YUV input) or R and B (RGB input)
    CSC:    out = clip(((M @ (in - input_bias)) >> 8) + output_bias, 0, 255), M = matrix_r<i>c<j>
    DTC:    pixel = (out - mean_chn - min_chn) * var_reci_chn

:func:`compile_aipp` builds exactly that as ONNX operators (integer arithmetic done exactly in float32,
``>> 8`` as ``floor(/256)``, chroma upsampled by repetition) and :func:`insert_aipp` splices it in front of
a model, so ONNX Runtime runs the same thing ``atc`` would have built.

Input layouts (the graph's uint8 input, batch first):

* ``YUV420SP_U8``: ``[N, H*3/2, W]``, the Y plane (H rows) followed by H/2 rows of interleaved chroma
  pairs. The pair order is whatever the source hands over: Ascend's DVPP JPEG decoder hands over VU (NV21),
  which is why the standard TorchVision config sets ``rbuv_swap_switch : true`` (the swap makes it YUV
  before the CSC, whose first row ``256 0 359`` is R = Y + 1.402 (V - 128)).
* ``RGB888_U8``: ``[N, H, W, 3]`` packed; with ``rbuv_swap_switch : true`` the source is BGR.

:func:`encode_source` does the reverse for the runner's DVPP emulation: from an RGB image it makes the
buffer that this config turns back into that RGB image (the inverse of the config's CSC matrix, i.e. the
BT.601 full-range RGB->YUV for the standard matrix; 2x2-averaged chroma; VU order when the config swaps).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AippConfigError", "AippConfig", "parse_aipp_config", "load_aipp_config", "compile_aipp",
           "insert_aipp", "config_from_metadata", "encode_source", "apply_aipp_reference", "AIPP_METADATA_KEY",
           "SUPPORTED_FORMATS", "onnx_opset"]

AIPP_METADATA_KEY = "seresnext.aipp"
SUPPORTED_FORMATS = ("YUV420SP_U8", "RGB888_U8")


class AippConfigError(ValueError):
    """A config the parser rejects; the message names the file, the line and the field."""


@dataclass(frozen=True)
class AippConfig:
    """A parsed static AIPP config (the fields this implementation supports), with CANN's defaults."""

    input_format: str
    src_image_size_w: int = 0
    src_image_size_h: int = 0
    crop: bool = False
    load_start_pos_w: int = 0
    load_start_pos_h: int = 0
    crop_size_w: int = 0
    crop_size_h: int = 0
    csc_switch: bool = False
    rbuv_swap_switch: bool = False
    matrix: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (0, 0, 0), (0, 0, 0))
    input_bias: tuple[int, int, int] = (0, 0, 0)
    output_bias: tuple[int, int, int] = (0, 0, 0)
    mean_chn: tuple[int, int, int] = (0, 0, 0)
    min_chn: tuple[float, float, float] = (0.0, 0.0, 0.0)
    var_reci_chn: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = ""

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) handed to the model."""
        if self.crop:
            return self.crop_size_h, self.crop_size_w
        return self.src_image_size_h, self.src_image_size_w

    def input_shape(self, batch: int | str) -> list[int | str]:
        """The uint8 input of the AIPP graph."""
        w, h = self.src_image_size_w, self.src_image_size_h
        if self.input_format == "YUV420SP_U8":
            return [batch, h * 3 // 2, w]
        return [batch, h, w, 3]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AippConfig:
        data = json.loads(text)
        for key in ("matrix",):
            data[key] = tuple(tuple(row) for row in data[key])
        for key in ("input_bias", "output_bias", "mean_chn", "min_chn", "var_reci_chn"):
            data[key] = tuple(data[key])
        return cls(**data)


# ----------------------------------------------------------------------------------------------- parsing
_BOOL = {"true": True, "false": False}
_SUPPORTED = {
    "aipp_mode": "enum", "related_input_rank": "int", "input_format": "enum",
    "src_image_size_w": "int", "src_image_size_h": "int",
    "crop": "bool", "load_start_pos_w": "int", "load_start_pos_h": "int", "crop_size_w": "int",
    "crop_size_h": "int", "csc_switch": "bool", "rbuv_swap_switch": "bool",
    **{f"matrix_r{r}c{c}": "int" for r in range(3) for c in range(3)},
    **{f"input_bias_{i}": "int" for i in range(3)}, **{f"output_bias_{i}": "int" for i in range(3)},
    **{f"mean_chn_{i}": "int" for i in range(4)}, **{f"min_chn_{i}": "float" for i in range(4)},
    **{f"var_reci_chn_{i}": "float" for i in range(4)},
}
# Fields of static AIPP that are accepted only with the value that switches them off.
_NEUTRAL = {"resize": False, "padding": False, "ax_swap_switch": False, "single_line_mode": False,
            "support_rotation": False, "left_padding_size": 0, "right_padding_size": 0,
            "top_padding_size": 0, "bottom_padding_size": 0, "resize_output_w": 0, "resize_output_h": 0,
            "max_src_image_size": 0, "input_edge_idx": 0}
_TOKEN = re.compile(r"\{|\}|:|[^\s{}:]+")


def _tokens(text: str) -> list[tuple[str, int]]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        out.extend((tok, number) for tok in _TOKEN.findall(line))
    return out


def _convert(where: str, key: str, kind: str, raw: str) -> Any:
    value = raw.strip("\"'")
    if kind == "bool":
        if value.lower() not in _BOOL:
            raise AippConfigError(f"{where}: {key} must be true or false, got {raw!r}")
        return _BOOL[value.lower()]
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            raise AippConfigError(f"{where}: {key} must be an integer, got {raw!r}") from None
    if kind == "float":
        try:
            number = float(value)
        except ValueError:
            raise AippConfigError(f"{where}: {key} must be a number, got {raw!r}") from None
        if not np.isfinite(number):
            raise AippConfigError(f"{where}: {key} must be finite, got {raw!r}")
        return number
    return value


def parse_aipp_config(text: str, source: str = "<config>") -> AippConfig:
    """Parse a static AIPP config (``aipp_op { key : value ... }``).

    Unknown fields, malformed values, duplicate fields, features this build does not implement (resize,
    padding, dynamic mode, other input formats) and inconsistent geometry raise :class:`AippConfigError`
    naming ``source:line``.
    """
    tokens = _tokens(text)
    if not tokens:
        raise AippConfigError(f"{source}: empty AIPP config (expected 'aipp_op {{ ... }}')")
    position = 0

    def take(expected: str | None = None) -> tuple[str, int]:
        nonlocal position
        if position >= len(tokens):
            line = tokens[-1][1]
            raise AippConfigError(f"{source}:{line}: unexpected end of file"
                                  + (f" (expected {expected!r})" if expected else ""))
        token = tokens[position]
        position += 1
        if expected is not None and token[0] != expected:
            raise AippConfigError(f"{source}:{token[1]}: expected {expected!r}, got {token[0]!r}")
        return token

    name, line = take()
    if name != "aipp_op":
        raise AippConfigError(f"{source}:{line}: expected 'aipp_op {{', got {name!r}")
    take("{")
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    while True:
        key, line = take()
        if key == "}":
            break
        where = f"{source}:{line}"
        if key in ("{", ":"):
            raise AippConfigError(f"{where}: expected a field name, got {key!r}")
        if position < len(tokens) and tokens[position][0] == "{":
            raise AippConfigError(f"{where}: '{key} {{ ... }}' blocks (dynamic AIPP) are not supported; "
                                  f"only static 'key : value' fields")
        take(":")
        raw, value_line = take()
        if raw in ("{", "}", ":"):
            raise AippConfigError(f"{source}:{value_line}: {key} has no value")
        if key in values:
            raise AippConfigError(f"{where}: {key} is set twice (first on line {lines[key]})")
        if key in _NEUTRAL:
            neutral = _NEUTRAL[key]
            value = _convert(where, key, "bool" if isinstance(neutral, bool) else "int", raw)
            if value != neutral:
                raise AippConfigError(f"{where}: '{key} : {raw}' is not supported by the ONNX Runtime build "
                                      f"(it implements crop, swap, csc and normalisation only)")
            continue
        if key not in _SUPPORTED:
            raise AippConfigError(f"{where}: unknown AIPP field {key!r}")
        values[key] = _convert(where, key, _SUPPORTED[key], raw)
        lines[key] = line
    if position != len(tokens):
        extra, line = tokens[position]
        raise AippConfigError(f"{source}:{line}: unexpected {extra!r} after the aipp_op block "
                              f"(one model input, one aipp_op)")

    def where(key: str) -> str:
        return f"{source}:{lines[key]}" if key in lines else source

    mode = values.get("aipp_mode", "static")
    if mode != "static":
        raise AippConfigError(f"{where('aipp_mode')}: aipp_mode {mode!r} is not supported (static only)")
    if values.get("related_input_rank", 0) != 0:
        raise AippConfigError(f"{where('related_input_rank')}: only related_input_rank 0 (one model input) "
                              f"is supported")
    if "input_format" not in values:
        raise AippConfigError(f"{source}: input_format is required ({' or '.join(SUPPORTED_FORMATS)})")
    if values["input_format"] not in SUPPORTED_FORMATS:
        raise AippConfigError(f"{where('input_format')}: input_format {values['input_format']!r} is not "
                              f"supported (use {' or '.join(SUPPORTED_FORMATS)})")
    for index in range(3):
        if values.get(f"var_reci_chn_{index}", 1.0) == 0:
            raise AippConfigError(f"{where(f'var_reci_chn_{index}')}: var_reci_chn_{index} is 0: every "
                                  f"pixel would become 0")
    for key in ("mean_chn_3", "min_chn_3", "var_reci_chn_3"):
        neutral = 1.0 if key.startswith("var") else 0
        if values.get(key, neutral) != neutral:
            raise AippConfigError(f"{where(key)}: {key} (the 4th channel) is not supported for 3-channel "
                                  f"input formats")
    for key in [k for k in values if k.startswith(("matrix_", "input_bias", "output_bias", "mean_chn"))]:
        low, high = (-32768, 32767) if key.startswith("matrix_") else (0, 255)
        if not low <= values[key] <= high:
            raise AippConfigError(f"{where(key)}: {key} {values[key]} is outside [{low}, {high}]")
    for key in ("src_image_size_w", "src_image_size_h", "load_start_pos_w", "load_start_pos_h",
                "crop_size_w", "crop_size_h"):
        if values.get(key, 0) < 0:
            raise AippConfigError(f"{where(key)}: {key} must not be negative")

    config = AippConfig(
        input_format=values["input_format"],
        src_image_size_w=values.get("src_image_size_w", 0), src_image_size_h=values.get("src_image_size_h", 0),
        crop=values.get("crop", False),
        load_start_pos_w=values.get("load_start_pos_w", 0), load_start_pos_h=values.get("load_start_pos_h", 0),
        crop_size_w=values.get("crop_size_w", 0), crop_size_h=values.get("crop_size_h", 0),
        csc_switch=values.get("csc_switch", False), rbuv_swap_switch=values.get("rbuv_swap_switch", False),
        matrix=tuple(tuple(values.get(f"matrix_r{r}c{c}", 0) for c in range(3)) for r in range(3)),
        input_bias=tuple(values.get(f"input_bias_{i}", 0) for i in range(3)),
        output_bias=tuple(values.get(f"output_bias_{i}", 0) for i in range(3)),
        mean_chn=tuple(values.get(f"mean_chn_{i}", 0) for i in range(3)),
        min_chn=tuple(values.get(f"min_chn_{i}", 0.0) for i in range(3)),
        var_reci_chn=tuple(values.get(f"var_reci_chn_{i}", 1.0) for i in range(3)),
        source=source)
    _check_geometry(config, where)
    if config.csc_switch and not np.any(np.array(config.matrix)):
        raise AippConfigError(f"{where('csc_switch')}: csc_switch is true but every matrix_r<i>c<j> is 0")
    if config.input_format == "YUV420SP_U8" and not config.csc_switch:
        raise AippConfigError(f"{where('csc_switch')}: YUV420SP_U8 input without csc_switch would hand YUV to "
                              f"an RGB model; set csc_switch : true and the YUV->RGB matrix")
    if config.csc_switch and abs(np.linalg.det(np.array(config.matrix, dtype=np.float64))) < 1e-6:
        raise AippConfigError(f"{where('matrix_r0c0')}: the CSC matrix is singular")
    return config


def _check_geometry(config: AippConfig, where) -> None:
    w, h = config.src_image_size_w, config.src_image_size_h
    if w == 0 or h == 0:
        raise AippConfigError(f"{where('src_image_size_w')}: src_image_size_w and src_image_size_h are required "
                              f"(the size of the image DVPP hands over, e.g. 256)")
    if config.input_format == "YUV420SP_U8" and (w % 2 or h % 2):
        raise AippConfigError(f"{where('src_image_size_w')}: YUV420SP_U8 needs an even src_image_size, "
                              f"got {w}x{h}")
    if not config.crop:
        return
    if config.crop_size_w <= 0 or config.crop_size_h <= 0:
        raise AippConfigError(f"{where('crop_size_w')}: crop is true but crop_size_w/h are not set")
    if config.input_format == "YUV420SP_U8" and (config.load_start_pos_w % 2 or config.load_start_pos_h % 2):
        raise AippConfigError(f"{where('load_start_pos_w')}: YUV420SP_U8 needs even load_start_pos_w/h, "
                              f"got {config.load_start_pos_w}, {config.load_start_pos_h}")
    if config.load_start_pos_w + config.crop_size_w > w or config.load_start_pos_h + config.crop_size_h > h:
        raise AippConfigError(
            f"{where('crop_size_w')}: the crop ({config.crop_size_w}x{config.crop_size_h} at "
            f"{config.load_start_pos_w},{config.load_start_pos_h}) does not fit in the {w}x{h} source image")


def load_aipp_config(path: str | PathLike) -> AippConfig:
    """Read and parse a config file (see :func:`parse_aipp_config`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AippConfigError(f"{path}: no such AIPP config file") from None
    except UnicodeDecodeError:
        raise AippConfigError(f"{path}: not a text file") from None
    return parse_aipp_config(text, str(path))


# ----------------------------------------------------------------------------------------------- reference
def _swap_order(config: AippConfig) -> list[int]:
    if not config.rbuv_swap_switch:
        return [0, 1, 2]
    return [0, 2, 1] if config.input_format == "YUV420SP_U8" else [2, 1, 0]


def _unpack(config: AippConfig, source: np.ndarray) -> np.ndarray:
    """uint8 source ``[N, ...]`` -> ``[N, H, W, 3]`` (YUV420SP chroma repeated 2x2)."""
    if config.input_format == "RGB888_U8":
        return source
    h = config.src_image_size_h
    luma = source[:, :h, :]
    chroma = source[:, h:, :].reshape(source.shape[0], h // 2, -1, 2)
    chroma = chroma.repeat(2, axis=1).repeat(2, axis=2)
    return np.concatenate([luma[..., None], chroma], axis=-1)


def apply_aipp_reference(config: AippConfig, source: np.ndarray) -> np.ndarray:
    """What the AIPP stage hands the model (float32 NCHW), computed directly in numpy (integer CSC)."""
    pixels = _unpack(config, np.asarray(source, dtype=np.uint8))
    if config.crop:
        top, left = config.load_start_pos_h, config.load_start_pos_w
        pixels = pixels[:, top:top + config.crop_size_h, left:left + config.crop_size_w]
    pixels = pixels[..., _swap_order(config)].astype(np.int64)
    if config.csc_switch:
        matrix = np.array(config.matrix, dtype=np.int64)
        converted = (pixels - np.array(config.input_bias)) @ matrix.T
        pixels = np.clip((converted >> 8) + np.array(config.output_bias), 0, 255)
    out = (pixels.astype(np.float32) - np.array(config.mean_chn, dtype=np.float32)
           - np.array(config.min_chn, dtype=np.float32)) * np.array(config.var_reci_chn, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


# ----------------------------------------------------------------------------------------------- source encoding
def encode_source(config: AippConfig, rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 image ``(src_h, src_w, 3)`` -> the uint8 buffer (without batch axis) the config expects.

    The inverse of the config: the CSC is undone with the inverse of its matrix (for the standard matrix
    that is BT.601 full-range RGB->YUV), chroma is averaged over 2x2 blocks for YUV420SP, and the channels
    are put in the order the config's swap turns back into the right one.
    """
    h, w = config.src_image_size_h, config.src_image_size_w
    if rgb.shape != (h, w, 3):
        raise ValueError(f"the image is {rgb.shape[1]}x{rgb.shape[0]}, the AIPP input is {w}x{h}")
    order = np.argsort(_swap_order(config))  # the swap is its own inverse; argsort keeps this explicit
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


# ----------------------------------------------------------------------------------------------- ONNX
def compile_aipp(config: AippConfig, *, input_name: str, output_name: str, batch: int | str,
                 opset: int = 11):
    """The AIPP stage as an ONNX graph: uint8 ``config.input_shape(batch)`` -> float32 NCHW (opset >= 11)."""
    if opset < 11:
        raise ValueError(f"the AIPP stage needs opset 11 or later, the model has opset {opset}")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), f"aipp_const_{name}"))
        return f"aipp_const_{name}"

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"aipp_{name}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    h, w = config.src_image_size_h, config.src_image_size_w
    if config.input_format == "YUV420SP_U8":
        luma = node("Slice", [input_name, const("y_start", np.array([0], np.int64)),
                              const("y_end", np.array([h], np.int64)), const("rows", np.array([1], np.int64))],
                    "luma")
        chroma = node("Slice", [input_name, const("uv_start", np.array([h], np.int64)),
                                const("uv_end", np.array([h * 3 // 2], np.int64)), "aipp_const_rows"], "chroma_rows")
        chroma = node("Reshape", [chroma, const("uv_shape", np.array([-1, h // 2, 1, w // 2, 1, 2], np.int64))],
                      "chroma_blocks")
        chroma = node("Expand", [chroma, const("uv_repeat", np.array([1, 1, 2, 1, 2, 1], np.int64))],
                      "chroma_repeated")
        chroma = node("Reshape", [chroma, const("uv_full", np.array([-1, h, w, 2], np.int64))], "chroma")
        if opset >= 13:
            luma = node("Unsqueeze", [luma, const("channel_axis", np.array([3], np.int64))], "luma_hwc")
        else:
            luma = node("Unsqueeze", [luma], "luma_hwc", axes=[3])
        pixels = node("Concat", [luma, chroma], "yuv", axis=3)
    else:
        pixels = input_name
    if config.crop:
        top, left = config.load_start_pos_h, config.load_start_pos_w
        pixels = node("Slice", [pixels, const("crop_start", np.array([top, left], np.int64)),
                                const("crop_end", np.array([top + config.crop_size_h, left + config.crop_size_w],
                                                           np.int64)),
                                const("crop_axes", np.array([1, 2], np.int64))], "crop")
    if config.rbuv_swap_switch:
        pixels = node("Gather", [pixels, const("swap", np.array(_swap_order(config), np.int64))], "swap", axis=3)
    pixels = node("Cast", [pixels], "float", to=TensorProto.FLOAT)
    if config.csc_switch:
        pixels = node("Sub", [pixels, const("input_bias", np.array(config.input_bias, np.float32))], "csc_in")
        matrix_t = np.array(config.matrix, dtype=np.float32).T.copy()
        pixels = node("MatMul", [pixels, const("matrix_t", matrix_t)], "csc_mul")
        pixels = node("Div", [pixels, const("shift", np.array(256.0, np.float32))], "csc_div")
        pixels = node("Floor", [pixels], "csc_shift")
        pixels = node("Add", [pixels, const("output_bias", np.array(config.output_bias, np.float32))], "csc_out")
        pixels = node("Clip", [pixels, const("zero", np.array(0.0, np.float32)),
                               const("max", np.array(255.0, np.float32))], "csc_clip")
    if any(config.mean_chn):
        pixels = node("Sub", [pixels, const("mean_chn", np.array(config.mean_chn, np.float32))], "mean")
    pixels = node("Sub", [pixels, const("min_chn", np.array(config.min_chn, np.float32))], "min")
    pixels = node("Mul", [pixels, const("var_reci_chn", np.array(config.var_reci_chn, np.float32))], "var")
    nodes.append(helper.make_node("Transpose", [pixels], [output_name], name="aipp_nchw", perm=[0, 3, 1, 2]))

    out_h, out_w = config.output_size
    graph = helper.make_graph(
        nodes, "aipp",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, config.input_shape(batch))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, 3, out_h, out_w])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def insert_aipp(model, config: AippConfig, source: str = "the model"):
    """``model`` with the AIPP stage in front of its (only) input; the input keeps its name.

    The model's input must be float32 ``[N, 3, H, W]`` with ``(H, W)`` equal to the AIPP output size,
    as ``atc`` requires. The config is recorded in the model's metadata for the runner.
    """
    import onnx

    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    if len(inputs) != 1:
        raise ValueError(f"{source}: AIPP needs a model with one input, it has {len(inputs)}")
    model_input = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
            for d in model_input.type.tensor_type.shape.dim]
    if model_input.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        raise ValueError(f"{source}: AIPP needs a float32 [N, 3, H, W] input, {model_input.name} is {dims}")
    out_h, out_w = config.output_size
    if (dims[2], dims[3]) != (out_h, out_w):
        raise AippConfigError(f"{config.source or 'AIPP config'}: hands the model {out_w}x{out_h} "
                              f"(crop_size_w/h or src_image_size_w/h) but {source} takes "
                              f"{dims[3]}x{dims[2]} ({model_input.name}{dims})")
    opset = onnx_opset(model)
    name = model_input.name
    bridge = "aipp_output"
    stage = compile_aipp(config, input_name=name, output_name=bridge, batch=dims[0], opset=opset)
    for n in graph.node:
        for index, value in enumerate(n.input):
            if value == name:
                n.input[index] = bridge
    for value_info in list(graph.value_info):
        if value_info.name == name:
            graph.value_info.remove(value_info)
    new_nodes = list(stage.graph.node) + list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(stage.graph.initializer)
    graph.input.remove(model_input)
    graph.input.insert(0, stage.graph.input[0])
    entry = model.metadata_props.add()
    entry.key, entry.value = AIPP_METADATA_KEY, config.to_json()
    return model


def onnx_opset(model) -> int:
    """The default-domain opset an ONNX model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("the model imports no default-domain opset")


def config_from_metadata(metadata: Mapping[str, str]) -> AippConfig | None:
    """The AIPP config recorded by :func:`insert_aipp`, or None for a model without AIPP."""
    text = metadata.get(AIPP_METADATA_KEY)
    return AippConfig.from_json(text) if text else None


def main(argv=None) -> int:
    """``python -m seresnext.aipp CONFIG``: check a config and say what the AIPP stage will do."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m seresnext.aipp", description=main.__doc__)
    parser.add_argument("config", help="AIPP config file, e.g. aipp_se_resnext50_32x4d_pth.config")
    config = load_aipp_config(parser.parse_args(argv).config)
    height, width = config.output_size
    steps = [f"{config.input_format} {config.src_image_size_w}x{config.src_image_size_h}"]
    if config.crop:
        steps.append(f"crop {width}x{height} at ({config.load_start_pos_w},{config.load_start_pos_h})")
    if config.rbuv_swap_switch:
        steps.append("swap " + ("U/V" if config.input_format == "YUV420SP_U8" else "R/B"))
    if config.csc_switch:
        steps.append("csc")
    steps.append("(x - mean - min) * var_reci -> float32 NCHW")
    print(f"aipp: {config.source}: " + ", ".join(steps))
    return 0


if __name__ == "__main__":
    import sys

    from .cli import run_main
    sys.exit(run_main(main, "seresnext.aipp"))
