"""Upstream's ``.bin`` preprocessing, byte for byte, fast and in parallel.

Upstream (``preprocess_se_resnext50_32x4d_pth.py``) did, per image: ``Image.open(f).convert('RGB')``; PIL
bilinear resize so the short side is 256 (the other side ``int(256 * long / short)``); a float32 copy of
the whole resized image; centre crop 224 at ``int((w - 224) / 2)``, ``int((h - 224) / 2)``; ``/ 255.``;
``- mean``; ``/ std`` (all in float32); HWC to CHW; ``tofile``.

Here the decode and the resize are the same PIL calls, so the pixels are the same. Everything after the
resize is a lookup: a uint8 channel value ``v`` always becomes ``((v / 255) - mean) / std`` computed in
float32 in that order, so a 3x256 table built with exactly those float32 operations gives the same bits,
and only the 224x224 crop is touched. Files are handled in sorted order by a process pool and written
atomically; ``resume`` skips outputs that already have the right size, after checking that the settings
recorded beside them (``.preprocess_settings.json``) are this run's.
"""
from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .formats import (BIN_SETTINGS_NAME, bin_file_name, bin_nbytes, read_bin_settings, remove_temporaries, write_bin,
                      write_bin_settings)

__all__ = ["RESIZE_SIZE", "CROP_SIZE", "MEAN", "STD", "PreprocessError", "PreprocessReport", "load_rgb",
           "resized_size", "crop_box", "normalization_table", "preprocess_image", "list_images",
           "preprocess_folder", "default_jobs"]

RESIZE_SIZE = 256
CROP_SIZE = 224
# The model's normalisation (seresnext.model.IMAGENET_MEAN / _STD); repeated here so that this module, and
# the tools built on it, start without importing torch. tests/test_offline_preprocess.py checks they agree.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class PreprocessError(ValueError):
    """A preprocessing job that cannot start (missing or empty folder); the message names the path."""


def default_jobs() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_rgb(path: str | PathLike, data: bytes | None = None) -> Image.Image:
    """Decode an image file (any format PIL reads, by content) as RGB, as upstream's ``convert('RGB')``.

    ``data`` is the file's bytes when already read (``path`` then only names it in errors). Raises
    ``ValueError`` naming the file when it is not an image or is truncated.
    """
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image (PIL cannot identify it)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot decode the image ({exc})") from None


def resized_size(width: int, height: int, size: int = RESIZE_SIZE) -> tuple[int, int]:
    """Upstream's resize target: short side ``size``, long side ``int(size * long / short)``."""
    if (width <= height and width == size) or (height <= width and height == size):
        return width, height
    if width < height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, crop: int = CROP_SIZE) -> tuple[int, int, int, int]:
    """Upstream's centre crop ``(left, top, right, bottom)`` in a ``width`` x ``height`` image."""
    left, top = int((width - crop) / 2), int((height - crop) / 2)
    return left, top, left + crop, top + crop


def normalization_table(mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """(3, 256) float32: channel ``c``, value ``v`` -> upstream's ``((v / 255.) - mean[c]) / std[c]``."""
    values = np.arange(256, dtype=np.float32) / 255.
    table = np.empty((3, 256), dtype=np.float32)
    for channel in range(3):
        table[channel] = values - mean[channel]
        table[channel] /= std[channel]
    return table


_TABLE = normalization_table()


def preprocess_image(path: str | PathLike, resize: int = RESIZE_SIZE, crop: int = CROP_SIZE,
                     table: np.ndarray = _TABLE) -> np.ndarray:
    """One image file -> float32 CHW ``(3, crop, crop)``, identical to upstream's bytes."""
    image = load_rgb(path)
    target = resized_size(*image.size, size=resize)
    if target != image.size:
        image = image.resize(target, Image.BILINEAR)
    if min(target) < crop:
        raise ValueError(f"{path}: resized to {target[0]}x{target[1]}, smaller than the {crop} crop")
    pixels = np.asarray(image.crop(crop_box(*target, crop=crop)))
    chw = np.empty((3, crop, crop), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=chw[channel])
    return chw


def list_images(folder: str | PathLike) -> list[Path]:
    """The regular, non-hidden files of ``folder``, sorted by name (images are recognised by content)."""
    folder = Path(folder)
    if not folder.exists():
        raise PreprocessError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise PreprocessError(f"{folder}: not a folder")
    files = sorted((Path(e.path) for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")),
                   key=lambda p: p.name)
    if not files:
        raise PreprocessError(f"{folder}: the folder is empty (expected JPEG images)")
    return files


@dataclass
class PreprocessReport:
    """What a folder run did: files written, skipped (``resume``) and failed (``(file, reason)``)."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _work(task: tuple[str, str, int, int]) -> str | None:
    source, target, resize, crop = task
    try:
        write_bin(target, preprocess_image(source, resize=resize, crop=crop))
    except ValueError as exc:
        return str(exc)
    except OSError as exc:  # e.g. disk full while writing
        return f"{target}: cannot write ({exc})"
    return None


def _describe(settings: dict) -> str:
    return " ".join(f"--{key} {value}" for key, value in sorted(settings.items()) if key in ("resize", "crop")) \
        + ("" if (settings.get("mean"), settings.get("std")) == (list(MEAN), list(STD))
           else f" mean {settings.get('mean')} std {settings.get('std')}")


def _record_settings(target: Path, outputs: list[Path], settings: dict, resume: bool) -> None:
    """Check (``resume``) or make (a new run) the record of the settings that wrote ``target``'s files."""
    recorded = read_bin_settings(target)
    if recorded == settings:
        return
    if resume:
        if recorded is None and any(path.is_file() for path in outputs):
            raise PreprocessError(f"{target}: --resume cannot tell which settings wrote its .bin files (no "
                                  f"{BIN_SETTINGS_NAME}); run again without --resume to write them all")
        if recorded is not None:
            raise PreprocessError(f"{target}: its .bin files were written with {_describe(recorded)}, this run "
                                  f"asks for {_describe(settings)}; run without --resume to write them all again, "
                                  f"or choose another folder")
    else:  # this run rewrites them all: none left from other settings may later pass for its own
        for path in outputs:
            path.unlink(missing_ok=True)
    write_bin_settings(target, settings)


def preprocess_folder(source: str | PathLike, target: str | PathLike, jobs: int | None = None,
                      resume: bool = False,
                      progress: Callable[[int], None] | None = None,
                      resize: int = RESIZE_SIZE, crop: int = CROP_SIZE) -> PreprocessReport:
    """Preprocess every image of ``source`` into ``target/<name>.bin`` with ``jobs`` processes.

    ``resize`` / ``crop`` default to upstream's 256 / 224; other values serve models trained at other sizes.
    The settings are recorded in ``target``; ``resume`` refuses a folder whose files were written with other
    settings (or with none recorded), since a file of the right size may still hold another resize.

    Failed files are listed in the report and never stop the others. ``progress(n)`` is called as files
    finish (in sorted order).
    """
    files = list_images(source)
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise PreprocessError(f"{target}: exists and is not a folder")
    target.mkdir(parents=True, exist_ok=True)
    remove_temporaries(target, lambda name: name.endswith(".bin"))  # left by an interrupted run
    _record_settings(target, [target / bin_file_name(path.name) for path in files],
                     {"resize": resize, "crop": crop, "mean": list(MEAN), "std": list(STD)}, resume)

    report = PreprocessReport()
    expected = bin_nbytes(3, crop, crop)
    owner: dict[str, str] = {}
    tasks = []
    for path in files:
        out_name = bin_file_name(path.name)
        if out_name in owner:
            report.failed.append((path.name, f"{path}: its output {out_name} is already produced by "
                                             f"{owner[out_name]} (same name up to the first dot)"))
            continue
        owner[out_name] = path.name
        out = target / out_name
        if resume and out.is_file() and out.stat().st_size == expected:
            report.skipped += 1
            if progress:
                progress(1)
            continue
        tasks.append((str(path), str(out), resize, crop))

    jobs = max(1, min(jobs or default_jobs(), len(tasks) or 1))
    if jobs == 1:
        results = map(_work, tasks)
        pool = None
    else:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                              else "spawn")
        pool = context.Pool(jobs)
        results = pool.imap(_work, tasks, chunksize=max(1, min(16, len(tasks) // (jobs * 8))))
    try:
        for (source_path, *_), error in zip(tasks, results):
            if error is None:
                report.written += 1
            else:
                report.failed.append((Path(source_path).name, error))
            if progress:
                progress(1)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    report.failed.sort()
    return report
