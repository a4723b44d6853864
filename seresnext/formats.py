"""The offline-inference chain's file formats, each read and written here and nowhere else.

Formats (upstream's, byte for byte where upstream defined the bytes):

* ``.bin`` input tensors: raw float32, CHW, no header (602,112 bytes for 3x224x224); beside them in their
  folder, ``.preprocess_settings.json`` records the settings that wrote them (ours, not upstream's).
* ``.info`` dataset lists: ``index path width height`` per line.
* dump files: ``<image name>_1.txt`` (one line, the logits space separated) or ``<image name>_1.bin``
  (raw float32).
* ``val_label.txt``: ``ILSVRC2012_val_00000001.JPEG 65`` per line (0-based class).
* ``result.json``: upstream's ``json.dump`` of ``{"title": ..., "value": [{"key": ..., "value": ...}, ...]}``.
* perf file ``perf_vision_batchsize_<bs>_device_<id>.txt``: the five ``[stage] throughputRate: ...`` lines.

Everything is written atomically (temporary file in the same folder, then rename), so a crash never leaves
a half-written file under the final name. This module imports no torch, so the tools that only move files
start quickly.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = [
    "FormatError", "WriteError", "atomic_write",
    "bin_file_name", "write_bin", "read_bin", "bin_from_bytes", "bin_nbytes",
    "BIN_SETTINGS_NAME", "write_bin_settings", "read_bin_settings",
    "InfoEntry", "write_info", "read_info",
    "DUMP_SUFFIX", "dump_file_name", "write_dump", "read_dump", "image_name_of_dump", "list_dumps",
    "read_val_label", "write_val_label",
    "result_json_dict", "write_result_json", "read_result_json",
    "PerfStats", "perf_file_name", "perf_lines", "write_perf_file", "read_perf_file", "PURE_INFER_PREFIX",
    "pure_infer_perf_file_name", "pure_infer_summary", "write_pure_infer_perf_file",
]


class FormatError(ValueError):
    """A file that does not follow its format; the message names the file (and line) and the problem."""


class WriteError(OSError):
    """A file that could not be written (disk full, read-only folder, a path under a file): one line naming
    the file and the OS error (an OS write error often names no file, or only a temporary one)."""

    @classmethod
    def naming(cls, path: str | PathLike, error: OSError) -> "WriteError":
        if isinstance(error, FileExistsError) and error.filename:  # making the folders failed
            return cls(f"{path}: cannot write ({error.filename} is a file, not a folder)")
        return cls(f"{path}: cannot write ({error.strerror or error})")


# ----------------------------------------------------------------------------------------------- writing
def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_process_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write(path: str | PathLike, data: bytes | bytearray | memoryview | str, *,
                 durable: bool = True) -> None:
    """Write ``data`` to ``path`` (creating its folder) through a temporary file beside it and a rename.

    ``durable`` also fsyncs the file before the rename (single important files: models, result.json).
    Bulk writers (one file per image) pass ``durable=False``: a crash then may lose the latest files but
    never leaves a partial one under its final name (and ``--resume`` checks sizes).
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ----------------------------------------------------------------------------------------------- .bin
def bin_file_name(image_file_name: str) -> str:
    """Upstream's output name: the image name up to its first dot, plus ``.bin``."""
    return image_file_name.split(".")[0] + ".bin"


def bin_nbytes(channels: int, height: int, width: int) -> int:
    return channels * height * width * 4


def write_bin(path: str | PathLike, chw: np.ndarray, *, durable: bool = False) -> None:
    """Write one preprocessed image (float32 CHW) as raw bytes, no header."""
    if chw.dtype != np.float32 or chw.ndim != 3:
        raise ValueError(f"{path}: a .bin holds a float32 CHW array, got {chw.dtype} {chw.shape}")
    atomic_write(path, memoryview(np.ascontiguousarray(chw)).cast("B"), durable=durable)


def read_bin(path: str | PathLike, shape: Sequence[int]) -> np.ndarray:
    """Read a raw float32 ``.bin`` of the given shape; a file of another size is a :class:`FormatError`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    return bin_from_bytes(data, shape, path)


def bin_from_bytes(data: bytes, shape: Sequence[int], path: str | PathLike = "<bytes>") -> np.ndarray:
    """A ``.bin`` file's bytes (already read) as a read-only float32 array of ``shape``."""
    expected = int(np.prod(shape)) * 4
    if len(data) != expected:
        raise FormatError(f"{path}: {len(data)} bytes, expected {expected} (float32 "
                          f"{'x'.join(map(str, shape))}); was it written by preprocess_se_resnext50_32x4d_pth.py "
                          f"for this input size?")
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


BIN_SETTINGS_NAME = ".preprocess_settings.json"
"""In a ``.bin`` folder: the preprocessing settings its files were written with, one JSON object."""


def write_bin_settings(folder: str | PathLike, settings: Mapping) -> None:
    atomic_write(Path(folder) / BIN_SETTINGS_NAME, json.dumps(dict(settings), sort_keys=True) + "\n")


def read_bin_settings(folder: str | PathLike) -> dict | None:
    """The settings recorded in a ``.bin`` folder, or None when there is no record."""
    path = Path(folder) / BIN_SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        settings = None
    if not isinstance(settings, dict):
        raise FormatError(f"{path}: not a settings record (a JSON object); delete it and preprocess again "
                          f"without --resume")
    return settings


# ----------------------------------------------------------------------------------------------- .info
@dataclass(frozen=True)
class InfoEntry:
    """One line of a ``.info`` file: ``index path width height``; ``line`` is its 1-based line number."""

    index: int
    path: str
    width: int
    height: int
    line: int = 0

    @property
    def image_name(self) -> str:
        """The name dump files are called after: the file name up to its first dot."""
        return os.path.basename(self.path).split(".")[0]


def write_info(path: str | PathLike, entries: Iterable[tuple[str, int | str, int | str]]) -> int:
    """Write ``(path, width, height)`` rows as ``index path width height`` with one continuous index."""
    lines = []
    for index, (file_path, width, height) in enumerate(entries):
        if any(c.isspace() for c in str(file_path)):
            raise FormatError(f"{path}: cannot list {file_path!r}: .info paths may not contain whitespace")
        lines.append(f"{index} {file_path} {width} {height}\n")
    atomic_write(path, "".join(lines))
    return len(lines)


def read_info(path: str | PathLike) -> list[InfoEntry]:
    """Parse a ``.info`` file; a malformed line is a :class:`FormatError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such .info file")
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            fields = raw.split()
            if len(fields) != 4:
                raise FormatError(f"{path}:{number}: expected 'index path width height', got {raw.strip()!r}")
            index, file_path, width, height = fields
            try:
                parsed = InfoEntry(int(index), file_path, int(width), int(height), number)
            except ValueError:
                raise FormatError(f"{path}:{number}: index, width and height must be integers, "
                                  f"got {raw.strip()!r}") from None
            if parsed.width <= 0 or parsed.height <= 0:
                raise FormatError(f"{path}:{number}: width and height must be positive, got {raw.strip()!r}")
            entries.append(parsed)
    if not entries:
        raise FormatError(f"{path}: the .info file lists no files")
    return entries


# ----------------------------------------------------------------------------------------------- dumps
DUMP_SUFFIX = "_1"
_DUMP_RE = re.compile(r"^(?P<name>.+)_(?P<output>\d+)\.(?P<ext>txt|bin)$")


def dump_file_name(image_name: str, binary: bool) -> str:
    """``<image name>_1.txt`` (or ``.bin``): the runner's output for the model's first output."""
    return f"{image_name}{DUMP_SUFFIX}.{'bin' if binary else 'txt'}"


def write_dump(folder: str | PathLike, image_name: str, logits: np.ndarray, binary: bool) -> Path:
    """Write one image's output: a text line of ``%.9g`` values (exact for float32) or raw float32."""
    path = Path(folder) / dump_file_name(image_name, binary)
    values = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1)
    if binary:
        atomic_write(path, memoryview(values).cast("B"), durable=False)
    else:
        atomic_write(path, " ".join(["%.9g" % v for v in values.tolist()]) + "\n", durable=False)
    return path


def image_name_of_dump(file_name: str) -> str | None:
    """``X_1.txt`` -> ``X`` (upstream: up to the first dot, then up to the last underscore); None if not a dump."""
    match = _DUMP_RE.match(file_name)
    if match is None or match.group("output") != DUMP_SUFFIX[1:]:
        return None
    stem = file_name.split(".")[0]
    return stem[:stem.rfind("_")]


def list_dumps(folder: str | PathLike) -> tuple[dict[str, Path], list[str]]:
    """Map image name -> dump file in ``folder``, and the names of files that are not ``*_1.txt|bin`` dumps."""
    folder = Path(folder)
    dumps: dict[str, Path] = {}
    others: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        name = image_name_of_dump(entry.name)
        if name is None:
            others.append(entry.name)
            continue
        if name in dumps:
            raise FormatError(f"{folder}: two dumps for image {name!r}: {dumps[name].name} and {entry.name}")
        dumps[name] = Path(entry.path)
    return dumps, others


def read_dump(path: str | PathLike) -> np.ndarray:
    """The float32 values of one dump file (text: its first line; ``.bin``: raw float32)."""
    path = Path(path)
    if path.suffix == ".bin":
        size = path.stat().st_size
        if size == 0 or size % 4:
            raise FormatError(f"{path}: {size} bytes is not a whole number of float32 values")
        return np.fromfile(path, dtype=np.float32)
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    fields = first.split()
    if not fields:
        raise FormatError(f"{path}:1: empty dump (expected the model's outputs, space separated)")
    try:
        return np.array(fields, dtype=np.float32)
    except ValueError:
        bad = next(v for v in fields if not _is_float(v))
        raise FormatError(f"{path}:1: {bad!r} is not a number") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- val_label.txt
def read_val_label(path: str | PathLike) -> dict[str, int]:
    """Image name (up to the first dot) -> 0-based class; malformed or duplicate lines name the line."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such label file")
    labels: dict[str, int] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            fields = raw.split()
            if len(fields) != 2:
                raise FormatError(f"{path}:{number}: expected 'image_file label', got {raw.strip()!r}")
            try:
                label = int(fields[1])
            except ValueError:
                raise FormatError(f"{path}:{number}: label {fields[1]!r} is not an integer") from None
            if label < 0:
                raise FormatError(f"{path}:{number}: label {label} is negative")
            name = fields[0].split(".")[0]
            if name in labels:
                raise FormatError(f"{path}:{number}: image {name!r} is already labelled on line "
                                  f"{first_line[name]}")
            labels[name] = label
            first_line[name] = number
    if not labels:
        raise FormatError(f"{path}: no labels in the file")
    return labels


def write_val_label(path: str | PathLike, rows: Iterable[tuple[str, int]]) -> int:
    """Write ``image_file label`` lines (in the order given)."""
    lines = [f"{name} {int(label)}\n" for name, label in rows]
    atomic_write(path, "".join(lines))
    return len(lines)


# ----------------------------------------------------------------------------------------------- result.json
def result_json_dict(num_images: int, num_classes: int | str, topk_accuracy: Sequence[float]) -> dict:
    """Upstream's result dict: counts and ``Top<k> accuracy`` as ``str(round(acc * 100, 2)) + '%'``.

    ``topk_accuracy`` holds fractions (numpy float64, as upstream's ``np.cumsum(hits) / count``), so the
    rounding and the string form are upstream's.
    """
    value = [{"key": "Number of images", "value": str(num_images)},
             {"key": "Number of classes", "value": str(num_classes)}]
    for k, accuracy in enumerate(topk_accuracy, 1):
        value.append({"key": "Top" + str(k) + " accuracy",
                      "value": str(round(np.float64(accuracy) * 100, 2)) + "%"})
    return {"title": "Overall statistical evaluation", "value": value}


def write_result_json(path: str | PathLike, table: Mapping) -> None:
    """``json.dump(table, f)`` with json's defaults, as upstream (no indent, no trailing newline)."""
    atomic_write(path, json.dumps(table))


def read_result_json(path: str | PathLike) -> dict[str, str]:
    """``result.json`` as ``{key: value}``."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
        return {row["key"]: row["value"] for row in table["value"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: not an upstream result.json ({exc})") from None


# ----------------------------------------------------------------------------------------------- perf file
@dataclass(frozen=True)
class PerfStats:
    """The runner's measurements; rates in images/s, latencies in ms.

    ``e2e_latency_ms`` is the whole run; the ``*_ms_per_image`` values are time spent in that stage per
    image; ``infer_ms_per_batch`` is the mean model call; ``infer_stage_rate`` counts images over the infer
    stage's wall time, ``interface_rate`` over the model calls alone.
    """

    e2e_rate: float
    e2e_latency_ms: float
    read_ms_per_image: float
    preprocess_ms_per_image: float
    infer_stage_rate: float
    interface_rate: float
    infer_ms_per_batch: float
    post_ms_per_image: float


def perf_file_name(batch_size: int, device_id: int) -> str:
    return f"perf_vision_batchsize_{batch_size}_device_{device_id}.txt"


def _rate(ms_per_image: float) -> float:
    return 1000.0 / ms_per_image if ms_per_image > 0 else 0.0


def perf_lines(stats: PerfStats, console: bool = False) -> str:
    """Upstream's five perf lines (``%g`` numbers, as benchmark.x86_64 printed them).

    The file says ``[infer]`` / ``[post]``; benchmark.x86_64's console summary said ``[inference]`` /
    ``[postprocess]``, and ``console=True`` keeps that.
    """
    g = lambda v: f"{v:g}"  # noqa: E731
    infer, post = ("inference", "postprocess") if console else ("infer", "post")
    return (f"[e2e] throughputRate: {g(stats.e2e_rate)}, latency: {g(stats.e2e_latency_ms)}\n"
            f"[data read] throughputRate: {g(_rate(stats.read_ms_per_image))}, "
            f"moduleLatency: {g(stats.read_ms_per_image)}\n"
            f"[preprocess] throughputRate: {g(_rate(stats.preprocess_ms_per_image))}, "
            f"moduleLatency: {g(stats.preprocess_ms_per_image)}\n"
            f"[{infer}] throughputRate: {g(stats.infer_stage_rate)}, Interface throughputRate: "
            f"{g(stats.interface_rate)}, moduleLatency: {g(stats.infer_ms_per_batch)}\n"
            f"[{post}] throughputRate: {g(_rate(stats.post_ms_per_image))}, "
            f"moduleLatency: {g(stats.post_ms_per_image)}\n")


def write_perf_file(path: str | PathLike, stats: PerfStats) -> str:
    """Write the perf file and return its text."""
    text = perf_lines(stats)
    atomic_write(path, text)
    return text


_PERF_LINE = re.compile(r"^\[(?P<stage>[a-z0-9 ]+)\] (?P<fields>.*)$")


def read_perf_file(path: str | PathLike) -> dict[str, dict[str, float]]:
    """``{stage: {field: value}}``, e.g. ``read_perf_file(p)["infer"]["Interface throughputRate"]``."""
    stages: dict[str, dict[str, float]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        match = _PERF_LINE.match(line.strip())
        if not match:
            raise FormatError(f"{path}:{number}: not a perf line: {line!r}")
        fields = {}
        for part in match.group("fields").split(", "):
            key, _, value = part.partition(": ")
            try:
                fields[key] = float(value)
            except ValueError:
                raise FormatError(f"{path}:{number}: {part!r} is not 'name: number'") from None
        stages[match.group("stage")] = fields
    return stages


PURE_INFER_PREFIX = "PureInfer_perf_of_"


def pure_infer_perf_file_name(model_path: str | PathLike, device_id: int) -> str:
    return f"{PURE_INFER_PREFIX}{Path(model_path).stem}_in_device_{device_id}.txt"


def pure_infer_summary(rate: float) -> str:
    """benchmark.x86_64's pure-inference line; ``ave_latency`` is ms per sample (1000 / rate)."""
    return f"ave_throughputRate = {rate:g}samples/s, ave_latency = {_rate(rate):g}ms\n"


def write_pure_infer_perf_file(path: str | PathLike, rate: float) -> str:
    """Write ``result/PureInfer_perf_of_<model>_in_device_<id>.txt`` (``-round=N`` without data)."""
    text = pure_infer_summary(rate)
    atomic_write(path, text)
    return text
