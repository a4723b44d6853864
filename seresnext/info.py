"""Dataset lists (``.info``) for the offline runner, as upstream's ``get_info.py`` made them.

Upstream globbed ``*.bin`` (or ``*.jpg``, ``*.jpeg``, ``*.JPG``, ``*.JPEG`` one after the other, restarting
the index for each) and wrote ``index path width height`` with the path as globbed (the folder as the user
typed it, joined to the file name). Here the index runs once over all files in sorted order, and JPEG sizes
come from the file header through Pillow (no OpenCV, no full decode).
"""
from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .formats import write_info

__all__ = ["InfoError", "JPEG_EXTENSIONS", "list_files", "write_bin_info", "write_jpg_info"]

JPEG_EXTENSIONS = (".jpg", ".jpeg")


class InfoError(ValueError):
    """A folder or file that cannot be listed; the message names it."""


def list_files(folder: str | PathLike, extensions: tuple[str, ...]) -> list[str]:
    """``os.path.join(folder, name)`` for the files whose extension (any case) is in ``extensions``, sorted."""
    root = Path(folder)
    if not root.exists():
        raise InfoError(f"{folder}: no such folder")
    if not root.is_dir():
        raise InfoError(f"{folder}: not a folder")
    names = sorted(e.name for e in os.scandir(root)
                   if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(extensions))
    if not names:
        raise InfoError(f"{folder}: no {'/'.join(extensions)} files in the folder")
    return [os.path.join(str(folder), name) for name in names]


def write_bin_info(folder: str | PathLike, info_path: str | PathLike, width: int, height: int) -> int:
    """List every ``.bin`` of ``folder`` with the model's input ``width`` and ``height``; returns the count."""
    if width <= 0 or height <= 0:
        raise InfoError(f"width and height must be positive integers, got {width} {height}")
    return write_info(info_path, ((path, width, height) for path in list_files(folder, (".bin",))))


def write_jpg_info(folder: str | PathLike, info_path: str | PathLike) -> int:
    """List every JPEG of ``folder`` with its real size (read from the header); returns the count.

    Files whose header cannot be read are all named in one :class:`InfoError`, and no ``.info`` is written.
    """
    rows, bad = [], []
    for path in list_files(folder, JPEG_EXTENSIONS):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            bad.append(f"{path} ({exc.__class__.__name__}: {exc})")
            continue
        rows.append((path, width, height))
    if bad:
        shown = "; ".join(bad[:10]) + (f"; ... ({len(bad)} in all)" if len(bad) > 10 else "")
        raise InfoError(f"cannot read the size of {len(bad)} file(s): {shown}")
    return write_info(info_path, rows)
