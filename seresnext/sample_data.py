"""Generate a small, deterministic, ImageNet-shaped sample dataset of synthetic shape images.

The dataset stands in for ImageNet in tests and smoke runs: the same folder layout and file names
(``train/<wnid>/<wnid>_<n>.JPEG``, ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``, a flat ``val_flat/``
copy, ``val_label.txt`` and ``synset_words.txt``), real JPEGs of varied sizes including a few grayscale
and CMYK ones, and classes that are told apart by shape, not by colour.

Run ``python -m seresnext.sample_data --out DIR`` or call :func:`generate`.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from seresnext.formats import atomic_write, write_val_label
from seresnext.imagenet import VAL_IMAGE_NAME
from seresnext.sample_shapes import MAX_CLASSES, SHAPE_KINDS, STYLES, SampleClass, render_image

# The first 24 ImageNet-1k WNIDs in sorted order, so class index i carries ImageNet's i-th WNID.
IMAGENET_FIRST_WNIDS = (
    "n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331",
    "n01498041", "n01514668", "n01514859", "n01518878", "n01530575", "n01531178",
    "n01532829", "n01534433", "n01537544", "n01558993", "n01560419", "n01580077",
    "n01582220", "n01592084", "n01601694", "n01608432", "n01614925", "n01616318",
)

TRAIN_DIR, VAL_DIR, VAL_FLAT_DIR = "train", "val", "val_flat"
VAL_LABEL_FILE, SYNSET_WORDS_FILE = "val_label.txt", "synset_words.txt"
DATASET_ENTRIES = (TRAIN_DIR, VAL_DIR, VAL_FLAT_DIR, VAL_LABEL_FILE, SYNSET_WORDS_FILE)

JPEG_QUALITY = 90
SPECIAL_MODE_FRACTION = 0.02  # share of grayscale and of CMYK JPEGs per split, as in real ImageNet
MIN_IMAGE_SIDE = 32
SPLIT_CODES = {"train": 0, "val": 1}
VAL_ORDER_STREAM, MODE_STREAM = 2, 3  # RNG stream ids beside the per-image (split, class, index) ones

class SampleDataError(ValueError):
    """A bad argument or output folder; the message names the flag or the path."""


def sample_classes(num_classes: int) -> list[SampleClass]:
    """The classes of a dataset with ``num_classes`` classes: filled shapes first, then outlined ones."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise SampleDataError(f"--num-classes must be between 1 and {MAX_CLASSES} "
                              f"({len(SHAPE_KINDS)} shapes x {len(STYLES)} styles), got {num_classes}")
    return [SampleClass(index=i, wnid=IMAGENET_FIRST_WNIDS[i], shape_index=i % len(SHAPE_KINDS),
                        outlined=i >= len(SHAPE_KINDS))
            for i in range(num_classes)]


# ----------------------------------------------------------------------------------------------
# Planning and writing the dataset.


def choose_image_modes(seed: int, split: str, count: int) -> list[str]:
    """JPEG colour modes for ``count`` images of a split: ~2% 'L' and ~2% 'CMYK' (at least one each
    when count >= 2), the rest 'RGB', chosen deterministically from the seed."""
    modes = ["RGB"] * count
    if count < 2:
        return modes
    per_mode = max(1, round(SPECIAL_MODE_FRACTION * count))
    rng = np.random.default_rng([seed, MODE_STREAM, SPLIT_CODES[split]])
    chosen = rng.choice(count, size=2 * per_mode, replace=False)
    for position, index in enumerate(chosen):
        modes[int(index)] = "L" if position < per_mode else "CMYK"
    return modes


@dataclass(frozen=True)
class ImageJob:
    """Everything a worker needs to draw and write one image."""

    path: Path
    entropy: tuple[int, ...]
    sample_class: SampleClass
    mode: str
    min_size: int
    max_size: int


def _write_image(job: ImageJob) -> None:
    picture = render_image(job.entropy, job.sample_class, job.min_size, job.max_size)
    if job.mode != "RGB":
        picture = picture.convert(job.mode)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    atomic_write(job.path, buffer.getvalue(), durable=False)  # a killed run leaves no truncated JPEG


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (a byte-identical copy where links are not possible)."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        os.link(source, temp)
    except OSError:
        atomic_write(target, source.read_bytes(), durable=False)
    else:
        os.replace(temp, target)


@dataclass(frozen=True)
class SampleDataset:
    """Where a generated sample dataset lies and what it holds."""

    root: Path
    train_dir: Path
    val_dir: Path
    val_flat_dir: Path
    val_label_file: Path
    synset_words_file: Path
    wnids: tuple[str, ...]
    class_names: tuple[str, ...]
    num_train: int
    num_val: int
    seconds: float
    bytes_on_disk: int

    @property
    def num_classes(self) -> int:
        return len(self.wnids)


def _check_arguments(num_classes: int, train_per_class: int, val_per_class: int,
                     min_size: int, max_size: int, workers: int) -> None:
    for flag, value in (("--num-classes", num_classes), ("--train-per-class", train_per_class),
                        ("--val-per-class", val_per_class), ("-j", workers)):
        if value < 1:
            raise SampleDataError(f"{flag} must be at least 1, got {value}")
    if min_size < MIN_IMAGE_SIDE:
        raise SampleDataError(f"--min-size must be at least {MIN_IMAGE_SIDE}, got {min_size}")
    if min_size > max_size:
        raise SampleDataError(f"--min-size ({min_size}) must not exceed --max-size ({max_size})")
    sample_classes(num_classes)


def _prepare_output_folder(root: Path, overwrite: bool) -> None:
    """Create ``root``; refuse one that holds files unless ``overwrite``, then remove only our own entries."""
    if root.exists() and not root.is_dir():
        raise SampleDataError(f"output folder {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise SampleDataError(f"output folder {root} is not empty; pass --overwrite to regenerate the "
                                  "sample dataset in it")
        for entry in DATASET_ENTRIES:
            path = root / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _bytes_on_disk(paths: Sequence[Path]) -> int:
    """Total size of ``paths`` and the files under them, counting hard-linked files once."""
    files = [path for path in paths if path.is_file()]
    files += [file for path in paths if path.is_dir() for file in path.rglob("*") if file.is_file()]
    sizes = {(stat.st_dev, stat.st_ino): stat.st_size for stat in map(os.stat, files)}
    return sum(sizes.values())


def generate(out_dir: str | os.PathLike, *, seed: int = 0, num_classes: int = 10, train_per_class: int = 100,
             val_per_class: int = 20, min_size: int = 200, max_size: int = 500, overwrite: bool = False,
             workers: int | None = None) -> SampleDataset:
    """Write the sample dataset to ``out_dir`` and return its paths and counts.

    The same arguments always give byte-identical files, whatever ``workers`` (default: all CPUs).
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    _check_arguments(num_classes, train_per_class, val_per_class, min_size, max_size, workers)
    started = time.perf_counter()
    root = Path(out_dir)
    _prepare_output_folder(root, overwrite)
    classes = sample_classes(num_classes)

    train_keys = [(c, i) for c in classes for i in range(train_per_class)]
    val_keys = [(c, i) for c in classes for i in range(val_per_class)]
    val_order = np.random.default_rng([seed, VAL_ORDER_STREAM]).permutation(len(val_keys))
    val_numbered = [(number, val_keys[int(key)]) for number, key in enumerate(val_order, start=1)]

    jobs: list[ImageJob] = []
    for (sample_class, index), mode in zip(train_keys, choose_image_modes(seed, "train", len(train_keys))):
        path = root / TRAIN_DIR / sample_class.wnid / f"{sample_class.wnid}_{index + 1}.JPEG"
        jobs.append(ImageJob(path, (seed, SPLIT_CODES["train"], sample_class.index, index), sample_class,
                             mode, min_size, max_size))
    for (number, (sample_class, index)), mode in zip(val_numbered, choose_image_modes(seed, "val", len(val_numbered))):
        path = root / VAL_DIR / sample_class.wnid / VAL_IMAGE_NAME.format(number)
        jobs.append(ImageJob(path, (seed, SPLIT_CODES["val"], sample_class.index, index), sample_class,
                             mode, min_size, max_size))
    for split in (TRAIN_DIR, VAL_DIR):
        for sample_class in classes:
            (root / split / sample_class.wnid).mkdir(parents=True, exist_ok=True)
    (root / VAL_FLAT_DIR).mkdir(exist_ok=True)

    workers = min(workers, len(jobs))
    if workers == 1:
        for job in jobs:
            _write_image(job)
    else:
        with multiprocessing.Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_image, jobs, chunksize=8):
                pass

    val_labels = []
    for number, (sample_class, _) in val_numbered:
        name = VAL_IMAGE_NAME.format(number)
        _link_or_copy(root / VAL_DIR / sample_class.wnid / name, root / VAL_FLAT_DIR / name)
        val_labels.append((name, sample_class.index))
    write_val_label(root / VAL_LABEL_FILE, val_labels)
    atomic_write(root / SYNSET_WORDS_FILE, "".join(f"{c.wnid} {c.name}\n" for c in classes))

    return SampleDataset(
        root=root, train_dir=root / TRAIN_DIR, val_dir=root / VAL_DIR, val_flat_dir=root / VAL_FLAT_DIR,
        val_label_file=root / VAL_LABEL_FILE, synset_words_file=root / SYNSET_WORDS_FILE,
        wnids=tuple(c.wnid for c in classes), class_names=tuple(c.name for c in classes),
        num_train=len(train_keys), num_val=len(val_keys), seconds=time.perf_counter() - started,
        bytes_on_disk=_bytes_on_disk([root / entry for entry in DATASET_ENTRIES]))


# ----------------------------------------------------------------------------------------------
# Command line.


class _OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``python -m seresnext.sample_data``."""
    parser = _OneLineErrorParser(prog="python -m seresnext.sample_data",
                                 description="Write a small synthetic ImageNet-layout dataset of shape images.")
    parser.add_argument("--out", required=True, help="output folder (train/, val/, val_flat/, val_label.txt, ...)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical files")
    parser.add_argument("--num-classes", type=int, default=10, help=f"1 to {MAX_CLASSES}")
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--min-size", type=int, default=200, help="smallest image side in pixels")
    parser.add_argument("--max-size", type=int, default=500, help="largest image side in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace a sample dataset already in --out")
    parser.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, generate the dataset and print a one-line summary; errors are one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        dataset = generate(args.out, seed=args.seed, num_classes=args.num_classes,
                           train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                           min_size=args.min_size, max_size=args.max_size, overwrite=args.overwrite,
                           workers=args.workers)
    except SampleDataError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except OSError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"sample_data: {dataset.num_train} train + {dataset.num_val} val images, {dataset.num_classes} classes "
          f"in {dataset.root} ({dataset.seconds:.1f} s, {dataset.bytes_on_disk / 1e6:.1f} MB on disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
