"""The offline-inference chain's file formats, each read and written here and nowhere else.

Formats (upstream's, byte for byte where upstream defined the bytes):

* ``.bin`` input tensors: raw float32, CHW, no header (602,112 bytes for 3x224x224); beside them in their
  folder, ``.preprocess_settings.json`` records the settings that wrote them (ours, not upstream's).
* ``.info`` dataset lists: ``index path width height`` per line.
* image names: a file's name without one known image or input extension (``ILSVRC2012_val_00000001.JPEG``,
  ``ILSVRC2012_val_00000001.bin``: ``ILSVRC2012_val_00000001``; ``my.photo.v2.JPEG``: ``my.photo.v2``).
  Upstream cut at the first dot, which is the same for ImageNet's names and merges dotted ones.
* dump files: ``<image name>_<k>.txt`` (the logits, space separated), ``.bin`` (raw float32) or ``.npy``,
  where ``k`` is the model output: benchmark.x86_64 numbers outputs from 1 (``_1``), ais_bench from 0 (``_0``),
  and msame writes ``<image name>_output_0.txt`` with a line break every 100 values.
* ``val_label.txt``: ``ILSVRC2012_val_00000001.JPEG 65`` per line (0-based class).
* ``result.json``: upstream's ``json.dump`` of ``{"title": ..., "value": [{"key": ..., "value": ...}, ...]}``.
* perf file ``perf_vision_batchsize_<bs>_device_<id>.txt``: the five ``[stage] throughputRate: ...`` lines, then
  ours in the same form: ``[images] processed: N, skipped: M, failed: F`` and ``[backend] provider: P[, device:
  D]`` (what really ran: ONNX Runtime can fall back to the CPU). The pure-inference perf file has its one line,
  then the same ``[backend]`` line.
* ais_bench's ``<run>_summary.json``: throughput and ``NPU_compute_time`` statistics (ms).

Everything is written atomically (temporary file in the same folder, then rename), so a crash never leaves
a half-written file under the final name. This module imports no torch, so the tools that only move files
start quickly.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = [
    "FormatError", "WriteError", "atomic_write", "remove_temporaries",
    "IMAGE_EXTENSIONS", "image_stem", "bin_file_name", "write_bin", "read_bin", "bin_from_bytes", "npy_from_bytes",
    "bin_nbytes", "BIN_SETTINGS_NAME", "write_bin_settings", "read_bin_settings",
    "InfoEntry", "write_info", "read_info",
    "DUMP_SUFFIX", "DUMP_FORMATS", "DumpName", "DumpListing", "dump_file_name", "write_dump", "read_dump",
    "parse_dump_name", "image_name_of_dump", "list_dumps", "dump_is_complete",
    "read_val_label", "write_val_label",
    "result_json_dict", "write_result_json", "read_result_json",
    "PerfStats", "perf_file_name", "perf_lines", "backend_line", "write_perf_file", "read_perf_file",
    "PURE_INFER_PREFIX",
    "read_pure_infer_perf_file",
    "pure_infer_perf_file_name", "pure_infer_summary", "write_pure_infer_perf_file",
    "ais_summary_dict", "ais_summary_lines", "write_ais_summary", "read_ais_summary",
]


class FormatError(ValueError):
    """A file that does not follow its format; the message names the file (and line) and the problem."""


class WriteError(OSError):
    """A file that could not be written (disk full, read-only folder, a path under a file): one line naming
    the file and the OS error (an OS write error often names no file, or only a temporary one)."""

    @classmethod
    def naming(cls, path: str | PathLike, error: OSError) -> WriteError:
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


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")  # what atomic_write's mkstemp names


def remove_temporaries(folder: str | PathLike, of: Callable[[str], bool]) -> list[Path]:
    """Delete the temporaries that killed :func:`atomic_write` calls left in ``folder`` (``.<name>.<random>.tmp``)
    for the final names ``of`` accepts, and return their paths; no other file is touched."""
    stale = []
    for entry in os.scandir(folder):
        match = _TEMPORARY.match(entry.name)
        if match and entry.is_file() and of(match.group("name")):
            stale.append(Path(entry.path))
            Path(entry.path).unlink(missing_ok=True)
    return stale


# ----------------------------------------------------------------------------------------------- image names
# Extensions that name a file's format, not the image: what preprocessing, get_info and the runners read.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".bin", ".npy")


def image_stem(file_name: str) -> str:
    """The image name of a file: its base name without one known extension (any case).

    ``ILSVRC2012_val_00000001.JPEG`` and ``ILSVRC2012_val_00000001.bin`` are ``ILSVRC2012_val_00000001`` (as
    upstream, which cut at the first dot); ``my.photo.v2.JPEG`` is ``my.photo.v2`` (upstream: ``my``).
    """
    base = os.path.basename(file_name)
    root, ext = os.path.splitext(base)
    return root if root and ext.lower() in IMAGE_EXTENSIONS else base


# ----------------------------------------------------------------------------------------------- .bin
def bin_file_name(image_file_name: str) -> str:
    """Upstream's output name: the image name plus ``.bin``."""
    return image_stem(image_file_name) + ".bin"


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


def npy_from_bytes(data: bytes, shape: Sequence[int], path: str | PathLike = "<bytes>") -> np.ndarray:
    """A float32 ``.npy`` input (ais_bench takes them as well as ``.bin``) of ``shape`` or ``(1, *shape)``."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FormatError(f"{path}: not a readable .npy array ({exc})") from None
    if array.dtype != np.float32 or array.size != int(np.prod(shape)):
        raise FormatError(f"{path}: {array.dtype} array of shape {list(array.shape)}, expected float32 "
                          f"{'x'.join(map(str, shape))}")
    return array.reshape(shape)


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
        """The name dump files are called after (:func:`image_stem` of the path)."""
        return image_stem(self.path)


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
DUMP_FORMATS = ("txt", "bin", "npy")
_DUMP_RE = re.compile(r"^(?P<stem>.+?)(?:_output)?_(?P<output>\d+)\.(?P<ext>" + "|".join(DUMP_FORMATS) + ")$")


def dump_file_name(image_name: str, binary: bool, suffix: str = DUMP_SUFFIX, ext: str | None = None) -> str:
    """``<image name>_1.txt`` (or ``.bin``): benchmark.x86_64's output for the model's first output.

    ais_bench's names are ``suffix="_0"`` and ``ext`` one of ``txt``, ``bin``, ``npy``.
    """
    return f"{image_name}{suffix}.{ext or ('bin' if binary else 'txt')}"


def write_dump(folder: str | PathLike, image_name: str, logits: np.ndarray, binary: bool,
               suffix: str = DUMP_SUFFIX, ext: str | None = None) -> Path:
    """Write one image's output: a text line of ``%.9g`` values (exact for float32), raw float32 (``.bin``)
    or a ``.npy`` array of shape ``(1, classes)`` (as ais_bench writes one image's slice of the batch)."""
    ext = ext or ("bin" if binary else "txt")
    path = Path(folder) / dump_file_name(image_name, binary, suffix, ext)
    values = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1)
    if ext == "bin":
        atomic_write(path, memoryview(values).cast("B"), durable=False)
    elif ext == "npy":
        buffer = io.BytesIO()
        np.save(buffer, values.reshape(1, -1), allow_pickle=False)
        atomic_write(path, buffer.getvalue(), durable=False)
    else:
        atomic_write(path, " ".join([f"{v:.9g}" for v in values.tolist()]) + "\n", durable=False)
    return path


@dataclass(frozen=True)
class DumpName:
    """What a dump file's name says: the image, the model output index and the format."""

    image: str
    output: int
    ext: str


def parse_dump_name(file_name: str) -> DumpName | None:
    """``X_1.txt``, ``X_0.bin``, ``X_output_0.txt``, ``X.JPEG_1.txt`` -> image ``X``; None if not a dump.

    Only the ``_<k>.<ext>`` suffix (and msame's ``_output``) and then a known image extension are removed,
    so dotted image names survive (``a.b.c_1.txt`` is image ``a.b.c``).
    """
    match = _DUMP_RE.match(file_name)
    if match is None:
        return None
    return DumpName(image_stem(match.group("stem")), int(match.group("output")), match.group("ext"))


def image_name_of_dump(file_name: str) -> str | None:
    """The image a dump file belongs to, or None if the name is not a dump's."""
    parsed = parse_dump_name(file_name)
    return parsed.image if parsed else None


@dataclass
class DumpListing:
    """A dump folder: the first output's dump of each image, and what was left aside."""

    dumps: dict[str, Path]
    ignored: list[str]  # files whose names are not dumps' (e.g. a summary.json)
    other_outputs: list[str]  # dumps of an image's later outputs (a model with several outputs)


def list_dumps(folder: str | PathLike) -> DumpListing:
    """Map image name -> the dump of its first model output (the lowest ``_<k>`` present for it).

    Two dumps of one image and output (``X_1.txt`` and ``X_1.bin``, or ``X_1.txt`` and ``X.JPEG_1.txt``)
    are a :class:`FormatError`.
    """
    folder = Path(folder)
    found: dict[str, dict[int, Path]] = {}
    ignored: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        parsed = parse_dump_name(entry.name)
        if parsed is None:
            ignored.append(entry.name)
            continue
        outputs = found.setdefault(parsed.image, {})
        if parsed.output in outputs:
            raise FormatError(f"{folder}: two dumps for image {parsed.image!r}: {outputs[parsed.output].name} "
                              f"and {entry.name}")
        outputs[parsed.output] = Path(entry.path)
    dumps, other_outputs = {}, []
    for image, outputs in found.items():
        first = min(outputs)
        dumps[image] = outputs[first]
        other_outputs += [path.name for index, path in sorted(outputs.items()) if index != first]
    return DumpListing(dumps, ignored, other_outputs)


def dump_is_complete(path: str | PathLike, values: int) -> bool:
    """Whether ``path`` holds a whole dump of ``values`` numbers, as :func:`write_dump` writes it. A killed write
    never leaves a partial file under the final name (it renames a finished temporary), but a power loss before
    the data reached the disk can leave an empty or short one."""
    path = Path(path)
    try:
        if path.suffix == ".bin":
            return path.stat().st_size == 4 * values
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False).size == values  # a short file fails to map
        data = path.read_bytes()
        return data.endswith(b"\n") and len(data.split()) == values
    except (OSError, ValueError, EOFError):
        return False


def read_dump(path: str | PathLike) -> np.ndarray:
    """The float32 values of one dump file: every value of a text file (whatever its line breaks), raw
    float32 of a ``.bin``, the array of a ``.npy``."""
    path = Path(path)
    if path.suffix == ".bin":
        size = path.stat().st_size
        if size == 0 or size % 4:
            raise FormatError(f"{path}: {size} bytes is not a whole number of float32 values")
        return np.fromfile(path, dtype=np.float32)
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FormatError(f"{path}: not a readable .npy array ({exc})") from None
        if array.size == 0 or not np.issubdtype(array.dtype, np.number):
            raise FormatError(f"{path}: {array.dtype} array of shape {array.shape}, expected the model's outputs")
        return array.astype(np.float32).reshape(-1)
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    fields = text.split()
    if not fields:
        raise FormatError(f"{path}:1: empty dump (expected the model's outputs, space separated)")
    try:
        return np.array(fields, dtype=np.float32)
    except ValueError:
        for number, line in enumerate(text.splitlines(), 1):
            bad = next((v for v in line.split() if not _is_float(v)), None)
            if bad is not None:
                raise FormatError(f"{path}:{number}: {bad!r} is not a number") from None
        raise


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- val_label.txt
def read_val_label(path: str | PathLike) -> dict[str, int]:
    """Image name (:func:`image_stem`) -> 0-based class; malformed or duplicate lines name the line."""
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
            name = image_stem(fields[0])
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
    stage's wall time, ``interface_rate`` over the model calls alone. ``processed`` (when set), ``skipped``
    (``-resume=true``: their dumps were already complete) and ``failed`` count the run's images.
    """

    e2e_rate: float
    e2e_latency_ms: float
    read_ms_per_image: float
    preprocess_ms_per_image: float
    infer_stage_rate: float
    interface_rate: float
    infer_ms_per_batch: float
    post_ms_per_image: float
    processed: int | None = None
    skipped: int = 0
    failed: int = 0
    provider: str = ""  # what ran, e.g. CUDAExecutionProvider (empty: not known, no [backend] line)
    provider_device: int | None = None  # its device index, on a GPU or NPU


def perf_file_name(batch_size: int, device_id: int) -> str:
    return f"perf_vision_batchsize_{batch_size}_device_{device_id}.txt"


def _rate(ms_per_image: float) -> float:
    return 1000.0 / ms_per_image if ms_per_image > 0 else 0.0


def backend_line(provider: str, device: int | None = None) -> str:
    """Ours: ``[backend] provider: CUDAExecutionProvider, device: 0`` (the provider that really ran); empty
    when ``provider`` is not known."""
    if not provider:
        return ""
    return f"[backend] provider: {provider}" + ("" if device is None else f", device: {device}") + "\n"


def perf_lines(stats: PerfStats, console: bool = False) -> str:
    """Upstream's five perf lines (``%g`` numbers, as benchmark.x86_64 printed them), then ours when the image
    counts are set: ``[images] processed: 37, skipped: 13, failed: 0``, and when the provider is known
    ``[backend] provider: CPUExecutionProvider`` (:func:`backend_line`), in the same form, so that parsers of
    upstream's lines (by stage name or by line number) read the file as before.

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
            f"moduleLatency: {g(stats.post_ms_per_image)}\n"
            + ("" if stats.processed is None else
               f"[images] processed: {stats.processed}, skipped: {stats.skipped}, failed: {stats.failed}\n")
            + ("" if console else backend_line(stats.provider, stats.provider_device)))


def write_perf_file(path: str | PathLike, stats: PerfStats) -> str:
    """Write the perf file and return its text."""
    text = perf_lines(stats)
    atomic_write(path, text)
    return text


_PERF_LINE = re.compile(r"^\[(?P<stage>[a-z0-9 ]+)\] (?P<fields>.*)$")


def read_perf_file(path: str | PathLike) -> dict[str, dict[str, float | str]]:
    """``{stage: {field: value}}``, e.g. ``read_perf_file(p)["infer"]["Interface throughputRate"]``; numbers
    as floats, the ``[backend]`` line's provider as text (``read_perf_file(p)["backend"]["provider"]``)."""
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
                if match.group("stage") != "backend" or not value:
                    raise FormatError(f"{path}:{number}: {part!r} is not 'name: number'") from None
                fields[key] = value
        stages[match.group("stage")] = fields
    return stages


PURE_INFER_PREFIX = "PureInfer_perf_of_"


def pure_infer_perf_file_name(model_path: str | PathLike, device_id: int) -> str:
    return f"{PURE_INFER_PREFIX}{Path(model_path).stem}_in_device_{device_id}.txt"


def pure_infer_summary(rate: float) -> str:
    """benchmark.x86_64's pure-inference line; ``ave_latency`` is ms per sample (1000 / rate)."""
    return f"ave_throughputRate = {rate:g}samples/s, ave_latency = {_rate(rate):g}ms\n"


def read_pure_infer_perf_file(path: str | PathLike) -> float:
    """The images/s of a pure-inference perf file (:func:`write_pure_infer_perf_file`; its first line)."""
    text = Path(path).read_text(encoding="utf-8")
    match = re.match(r"ave_throughputRate = ([0-9.eE+-]+)samples/s", text)
    if not match:
        raise FormatError(f"{path}:1: not a pure-inference perf line: {text.splitlines()[0] if text else ''!r}")
    return float(match.group(1))


def write_pure_infer_perf_file(path: str | PathLike, rate: float, provider: str = "",
                               provider_device: int | None = None) -> str:
    """Write ``result/PureInfer_perf_of_<model>_in_device_<id>.txt`` (``-round=N`` without data): upstream's
    line, then ours naming the provider that ran (:func:`backend_line`)."""
    text = pure_infer_summary(rate) + backend_line(provider, provider_device)
    atomic_write(path, text)
    return text


# ----------------------------------------------------------------------------------------------- ais_bench summary
AIS_PERCENTILE = 99


def _time_stats(values_ms: Sequence[float]) -> dict:
    """ais_bench's statistics block (ms): min, max, mean, median, percentile(99%), count; zeros when empty."""
    values = np.asarray(values_ms, dtype=np.float64)
    if values.size == 0:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, f"percentile({AIS_PERCENTILE}%)": 0.0,
                "count": 0}
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "median": float(np.median(values)),
            f"percentile({AIS_PERCENTILE}%)": float(np.percentile(values, AIS_PERCENTILE)), "count": int(values.size)}


def ais_summary_dict(compute_ms: Sequence[float], batch_size: float,
                     files: Sequence[tuple[Sequence[str], Sequence[str]]] = (), args: Sequence[str] = ()) -> dict:
    """ais_bench's ``<run>_summary.json``: ``NPU_compute_time`` (ms per model call), ``H2D_latency`` and
    ``D2H_latency`` (host-device copies: none here, so empty blocks), ``throughput`` = 1000 * batch / mean
    compute ms, ``filesinfo`` (per sample: input and output files), ``args`` and the per-call list."""
    compute = _time_stats(compute_ms)
    return {
        "filesinfo": {str(i): {"infiles": list(infiles), "outfiles": list(outfiles)}
                      for i, (infiles, outfiles) in enumerate(files)},
        "args": list(args),
        "NPU_compute_time": compute,
        "H2D_latency": _time_stats(()),
        "D2H_latency": _time_stats(()),
        "throughput": 1000.0 * batch_size / compute["mean"] if compute["mean"] else 0.0,
        "npu_compute_time_list": [float(v) for v in compute_ms],
        "pid": os.getpid(),
    }


def ais_summary_lines(summary: Mapping, batch_size: float) -> str:
    """ais_bench's console summary: the NPU_compute_time statistics and the throughput line."""
    t = summary["NPU_compute_time"]
    return ("[INFO] -----------------Performance Summary------------------\n"
            f"[INFO] NPU_compute_time (ms): min = {t['min']}, max = {t['max']}, mean = {t['mean']}, "
            f"median = {t['median']}, percentile({AIS_PERCENTILE}%) = {t[f'percentile({AIS_PERCENTILE}%)']}\n"
            f"[INFO] throughput 1000*batchsize.mean({batch_size})/NPU_compute_time.mean({t['mean']}): "
            f"{summary['throughput']}\n"
            "[INFO] ------------------------------------------------------\n")


def write_ais_summary(path: str | PathLike, summary: Mapping) -> None:
    """``json.dump`` of the summary, as ais_bench writes it."""
    atomic_write(path, json.dumps(summary))


def read_ais_summary(path: str | PathLike) -> dict:
    """An ais_bench ``*_summary.json``; one that lacks ``throughput`` or ``NPU_compute_time`` is a FormatError."""
    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        float(summary["throughput"]), float(summary["NPU_compute_time"]["mean"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: not an ais_bench summary.json ({exc.__class__.__name__}: {exc})") from None
    return summary
