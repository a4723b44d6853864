"""ImageNet metadata available offline: class names, and labels from the devkit or a class-sorted folder.

Class indices are positions in the sorted WNID list, the order torchvision's ``ImageFolder`` gives the
``train/<wnid>/`` folders (and the order of ``val_label.txt``).
"""
from __future__ import annotations

import io
import os
import tarfile
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["LabelError", "imagenet_class_names", "labels_from_devkit", "labels_from_class_folders",
           "diagnose_val_labels", "VAL_IMAGE_NAME"]

VAL_IMAGE_NAME = "ILSVRC2012_val_{:08d}.JPEG"
_META = "data/meta.mat"
_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"


class LabelError(ValueError):
    """A devkit or folder that does not give labels; the message names the file and the problem."""


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in class-index order (shipped inside torchvision; no download)."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _devkit_members(devkit: Path) -> tuple[bytes, bytes]:
    """``meta.mat`` and the validation ground truth, from the archive or an unpacked devkit folder."""
    if devkit.is_dir():
        found = {}
        for suffix in (_META, _GROUND_TRUTH):
            matches = sorted(devkit.rglob(Path(suffix).name))
            matches = [m for m in matches if m.as_posix().endswith(suffix)]
            if not matches:
                raise LabelError(f"{devkit}: no {suffix} inside (is this ILSVRC2012_devkit_t12?)")
            found[suffix] = matches[0].read_bytes()
        return found[_META], found[_GROUND_TRUTH]
    try:
        with tarfile.open(devkit) as archive:
            found = {}
            for member in archive.getmembers():
                for suffix in (_META, _GROUND_TRUTH):
                    if member.isfile() and member.name.endswith(suffix):
                        found[suffix] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise LabelError(f"{devkit}: not a readable devkit archive ({exc})") from None
    missing = [s for s in (_META, _GROUND_TRUTH) if s not in found]
    if missing:
        raise LabelError(f"{devkit}: the archive has no {', '.join(missing)} (is this ILSVRC2012_devkit_t12?)")
    return found[_META], found[_GROUND_TRUTH]


def labels_from_devkit(devkit: str | PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """Sorted WNIDs and ``(ILSVRC2012_val_XXXXXXXX.JPEG, class)`` rows from ``ILSVRC2012_devkit_t12.tar.gz``.

    The devkit numbers classes by ``ILSVRC2012_ID`` (not sorted by WNID); this maps them to sorted-WNID
    indices. Reading ``meta.mat`` needs scipy.
    """
    devkit = Path(devkit)
    if not devkit.exists():
        raise LabelError(f"{devkit}: no such file or folder")
    meta_bytes, truth_bytes = _devkit_members(devkit)
    try:
        from scipy.io import loadmat
    except ImportError:
        raise LabelError("reading the devkit's meta.mat needs scipy: pip install scipy") from None
    try:
        synsets = np.atleast_1d(loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"])
        leaves = [(int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in synsets if int(s["num_children"]) == 0]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise LabelError(f"{devkit}: {_META} is not the devkit's synset table ({exc})") from None
    wnids = sorted(wnid for _, wnid in leaves)
    index_of_wnid = {wnid: i for i, wnid in enumerate(wnids)}
    class_of_id = {devkit_id: index_of_wnid[wnid] for devkit_id, wnid in leaves}
    rows = []
    for number, line in enumerate(truth_bytes.decode("ascii", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((VAL_IMAGE_NAME.format(number), class_of_id[int(line)]))
        except (ValueError, KeyError):
            raise LabelError(f"{devkit}: {_GROUND_TRUTH}:{number}: {line.strip()!r} is not an "
                             f"ILSVRC2012_ID of a leaf class") from None
    return wnids, rows


def labels_from_class_folders(folder: str | PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """Sorted class folder names and ``(image file, class)`` rows from ``folder/<wnid>/<image>``.

    Rows are sorted by file name; a file name in two class folders is an error.
    """
    root = Path(folder)
    if not root.is_dir():
        raise LabelError(f"{folder}: no such folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise LabelError(f"{folder}: no class sub-folders (expected {folder}/<wnid>/<image>)")
    rows: dict[str, int] = {}
    where: dict[str, str] = {}
    for index, wnid in enumerate(classes):
        for entry in os.scandir(root / wnid):
            if not entry.is_file() or entry.name.startswith("."):
                continue
            if entry.name in rows:
                raise LabelError(f"{folder}: {entry.name} is in both {where[entry.name]}/ and {wnid}/")
            rows[entry.name], where[entry.name] = index, wnid
    if not rows:
        raise LabelError(f"{folder}: the class folders hold no files")
    return classes, sorted(rows.items())


def diagnose_val_labels(labels: dict[str, int], truth: dict[str, int]) -> str | None:
    """Why ``labels`` (image name -> class, from a ``val_label.txt``) disagree with ``truth`` (from the
    ``val/<wnid>/`` folders, sorted-WNID order), or None when every image of ``truth`` has its label.

    Recognises the two usual mistakes, both of which give near-chance accuracy: 1-based labels, and another
    class order (each folder's images share one label that is not the folder's index, e.g. the devkit's
    ILSVRC2012_ID numbering).
    """
    missing = [name for name in truth if name not in labels]
    if missing:
        return (f"has no line for {len(missing)} of the {len(truth)} images in val/ (e.g. {missing[0]}); it "
                f"needs one line per image")
    wrong = [name for name in truth if labels[name] != truth[name]]
    if not wrong:
        return None
    if all(labels[name] == truth[name] + 1 for name in truth):
        return "is 1-based: every label is one more than its val/<wnid>/ folder's index (labels must be 0-based)"
    mapped: dict[int, set[int]] = {}
    for name, cls in truth.items():
        mapped.setdefault(cls, set()).add(labels[name])
    if all(len(v) == 1 for v in mapped.values()) and len({next(iter(v)) for v in mapped.values()}) == len(mapped):
        return (f"numbers the classes in another order: the images of each val/<wnid>/ folder share one label, but "
                f"{sum(1 for c, v in mapped.items() if v != {c})} of {len(mapped)} classes are not at their "
                f"sorted-WNID index (the devkit's ILSVRC2012_ID order? make_val_label.py devkit maps it)")
    return f"gives {len(wrong)} of the {len(truth)} images another class than their val/<wnid>/ folder"
