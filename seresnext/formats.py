"""The offline-inference chain's input formats, and the atomic writes every file of this package goes through.

Formats (upstream's, byte for byte where upstream defined the bytes):

* ``.bin`` input tensors: raw float32, CHW, no header (602,112 bytes for 3x224x224); beside them in their
  folder, ``.preprocess_settings.json`` records the settings that wrote them (ours, not upstream's).
* ``.info`` dataset lists: ``index path width height`` per line.
* image names: a file's name without one known image or input extension (``ILSVRC2012_val_00000001.JPEG``,
  ``ILSVRC2012_val_00000001.bin``: ``ILSVRC2012_val_00000001``; ``my.photo.v2.JPEG``: ``my.photo.v2``).
  Upstream cut at the first dot, which is the same for ImageNet's names and merges dotted ones.
* ``val_label.txt``: ``ILSVRC2012_val_00000001.JPEG 65`` per line (0-based class).

What a run produces (dump files, ``result.json``, the perf files, ais_bench's summary) is read and written in
:mod:`seresnext.output_formats`.

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
    "read_val_label", "write_val_label",
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
