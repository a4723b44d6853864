"""The AIPP config file (static mode): tokenise, check each field against what CANN accepts, and the geometry.

The format and what each stage does are described in :mod:`seresnext.aipp`.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AippConfigError", "AippConfig", "parse_aipp_config", "load_aipp_config", "config_from_metadata",
           "AIPP_METADATA_KEY", "SUPPORTED_FORMATS"]

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

    def swap_order(self) -> list[int]:
        """The channel order after ``rbuv_swap_switch`` (U and V swapped for YUV input, R and B for RGB)."""
        if not self.rbuv_swap_switch:
            return [0, 1, 2]
        return [0, 2, 1] if self.input_format == "YUV420SP_U8" else [2, 1, 0]

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
    values, lines = _read_fields(_tokens(text), source)

    def where(key: str) -> str:
        return f"{source}:{lines[key]}" if key in lines else source

    _check_fields(values, source, where)
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


def _read_fields(tokens: list[tuple[str, int]], source: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The ``aipp_op { key : value ... }`` block: each supported field's value, and the line it is on."""
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
    return values, lines


def _check_fields(values: Mapping[str, Any], source: str, where: Callable[[str], str]) -> None:
    """Each field on its own: the mode, the input, and every value within what CANN accepts."""
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


def config_from_metadata(metadata: Mapping[str, str]) -> AippConfig | None:
    """The AIPP config recorded by :func:`insert_aipp`, or None for a model without AIPP."""
    text = metadata.get(AIPP_METADATA_KEY)
    return AippConfig.from_json(text) if text else None
