"""Training and validation data: layout checks, transforms, datasets, samplers and loaders.

The layout is upstream's: ``<data>/train/<class>/<image>`` and ``<data>/val/<class>/<image>`` (torchvision
``ImageFolder``), with optional ``synset_words.txt`` (``wnid name`` lines) in ``<data>`` or its parent for
human-readable class names.

Two properties matter for training that survives faults:

* **Deterministic order and augmentation.** The train sampler shuffles with ``seed + epoch`` (as
  ``DistributedSampler``), and every sample's random crop/flip is drawn from its own generator seeded by
  ``(seed, epoch, index)``. So the batches of an epoch do not depend on the number of loader workers, and a
  run resumed from a checkpoint (even one written mid-epoch) sees exactly the data an uninterrupted run sees.
* **Unreadable images do not stop a run.** A train image that cannot be decoded is replaced by the next
  readable one (batches keep their shape, so every rank still takes the same steps); a val image is dropped.
  Each is reported by path, and more than :data:`MAX_BAD_FRACTION` of a split stops the run.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import first_line
from .model import IMAGENET_MEAN, IMAGENET_STD
from .progressive_sizes import parse_progressive_sizes, train_size_at

__all__ = ["DataError", "MAX_BAD_FRACTION", "check_image_folder", "read_class_names", "train_transform",
           "val_transform", "val_sizes", "parse_progressive_sizes", "train_size_at", "RobustImageFolder",
           "SyntheticImages", "TrainSampler", "ShardSampler", "collate_skipping", "SampleKey", "make_loader",
           "workers_stopped_after",
           "steps_per_epoch", "accumulation_plan", "resume_position", "check_bad_fraction"]

MAX_BAD_FRACTION = 0.01
"""A split with more unreadable images than this fraction is refused."""

_SUBSTITUTE_TRIES = 64


class DataError(ValueError):
    """The dataset cannot be used; the message names the path (and the flag) at fault."""


# ----------------------------------------------------------------------------------------------- layout ---

def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _has_image(folder: Path) -> bool:
    for _root, _dirs, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
            return True
    return False


def check_image_folder(data_path: str | PathLike, splits: Sequence[str] = ("train", "val")) -> list[str]:
    """Check ``<data>/<split>/<class>/<image>`` for each split and return the class list (sorted WNIDs).

    Raises :class:`DataError` before any work starts when the folder is missing, a split is missing or
    empty, a split holds images but no class folders, a class folder holds no image, or the splits' class
    lists differ.
    """
    root = Path(data_path)
    layout = f"expected {root}/train/<class>/<image> and {root}/val/<class>/<image> (ImageFolder layout)"
    if not root.is_dir():
        raise DataError(f"--data_path {root}: no such directory")
    class_lists: dict[str, list[str]] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"--data_path {root}: no '{split}' folder; {layout}")
        classes = _class_dirs(split_dir)
        if not classes:
            loose = any(f.lower().endswith(IMG_EXTENSIONS) for f in os.listdir(split_dir))
            what = "holds images but no class folders" if loose else "is empty"
            raise DataError(f"--data_path {root}: {split_dir} {what}; {layout}")
        empty = [c for c in classes if not _has_image(split_dir / c)]
        if empty:
            shown = ", ".join(empty[:5]) + (f", ... ({len(empty)} in all)" if len(empty) > 5 else "")
            raise DataError(f"--data_path {root}: class folders without images in {split_dir}: {shown}")
        class_lists[split] = classes
    if "train" in class_lists and "val" in class_lists and class_lists["train"] != class_lists["val"]:
        train, val = set(class_lists["train"]), set(class_lists["val"])
        only_train = sorted(train - val)
        only_val = sorted(val - train)
        parts = []
        if only_train:
            parts.append(f"only in train: {', '.join(only_train[:5])}" + (" ..." if len(only_train) > 5 else ""))
        if only_val:
            parts.append(f"only in val: {', '.join(only_val[:5])}" + (" ..." if len(only_val) > 5 else ""))
        raise DataError(f"--data_path {root}: train and val class lists differ ({'; '.join(parts)})")
    return next(iter(class_lists.values()))


def read_class_names(data_path: str | PathLike, classes: Sequence[str]) -> list[str]:
    """Human-readable names for ``classes`` from ``synset_words.txt`` (``wnid name`` lines) in ``<data>`` or
    its parent; a class without a line (or with no file at all) keeps its folder name."""
    root = Path(data_path)
    names: dict[str, str] = {}
    for candidate in (root / "synset_words.txt", root.parent / "synset_words.txt"):
        if candidate.is_file():
            for line in candidate.read_text(encoding="utf-8", errors="replace").splitlines():
                wnid, _, name = line.strip().partition(" ")
                if wnid and name.strip():
                    names[wnid] = name.strip()
            break
    return [names.get(c, c) for c in classes]


# ------------------------------------------------------------------------------------------- transforms ---

def _normalize() -> transforms.Normalize:
    return transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)


def train_transform(image_size: int = 224, min_crop_scale: float = 0.08,
                    max_crop_aspect: float = 4 / 3) -> transforms.Compose:
    """Upstream's train recipe: RandomResizedCrop (area fraction ``min_crop_scale``..1 and aspect ratio
    1/``max_crop_aspect``..``max_crop_aspect``, torchvision's defaults 0.08 and 4/3), horizontal flip,
    ImageNet normalisation."""
    return transforms.Compose([transforms.RandomResizedCrop(image_size, scale=(min_crop_scale, 1.0),
                                                            ratio=(1 / max_crop_aspect, max_crop_aspect)),
                               transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), _normalize()])


def val_sizes(image_size: int, resize_size: int | None, crop_size: int | None) -> tuple[int, int]:
    """Validation resize and crop: 256/224 for 224 px, and the same 8:7 ratio for other ``--image-size``."""
    crop = crop_size if crop_size is not None else image_size
    resize = resize_size if resize_size is not None else int(round(crop * 256 / 224))
    return resize, crop


def val_transform(resize_size: int = 256, crop_size: int = 224) -> transforms.Compose:
    """Upstream's val recipe: Resize (short side), CenterCrop, ImageNet normalisation."""
    return transforms.Compose([transforms.Resize(resize_size), transforms.CenterCrop(crop_size),
                               transforms.ToTensor(), _normalize()])


# --------------------------------------------------------------------------------------------- datasets ---

class SampleKey(NamedTuple):
    """What :class:`TrainSampler` yields: a sample's index with the epoch and train crop size it is drawn for.
    The loader's workers persist across epochs, so the epoch and size travel with each index from the sampler
    (in the training process) instead of being set on the workers' copies of the dataset."""

    index: int
    epoch: int
    size: int | None = None


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63)


class RobustImageFolder(datasets.ImageFolder):
    """``ImageFolder`` that reports unreadable images instead of crashing, and seeds each sample's transform.

    Items are ``(image, target, bad)`` where ``bad`` lists ``"path (reason)"`` for every unreadable file met
    while producing the item. With ``substitute=True`` (train) an unreadable image is replaced by the next
    readable one; otherwise (val) ``image`` is None and :func:`collate_skipping` drops it.
    ``seed`` (train) makes the random transform of sample ``i`` in epoch ``e`` a function of
    ``(seed, e, i)`` only; call :meth:`set_epoch` before iterating.
    """

    def __init__(self, root: str | PathLike, transform: Any, *, substitute: bool, seed: int | None = None,
                 transform_at: Callable[[int], Any] | None = None):
        try:
            super().__init__(str(root), transform=transform)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"--data_path: cannot read {root}: {exc}") from None
        self.substitute = substitute
        self.seed = seed
        self.epoch = 0
        self.transform_at = transform_at  # the transform for a :class:`SampleKey`'s size (progressive resizing)
        self._transforms: dict[int, Any] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, index: int) -> tuple[Any, int, str | None]:
        path, target = self.samples[index]
        try:
            return self.loader(path), target, None
        except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
            reason = first_line(exc)
            return None, target, f"{path} ({reason})"

    def _transform_for(self, key: SampleKey) -> Any:
        if key.size is None or self.transform_at is None:
            return self.transform
        if key.size not in self._transforms:
            self._transforms[key.size] = self.transform_at(key.size)
        return self._transforms[key.size]

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor | None, int, tuple[str, ...]]:
        if isinstance(key, SampleKey):
            index, epoch, transform = key.index, key.epoch, self._transform_for(key)
        else:
            index, epoch, transform = key, self.epoch, self.transform
        bad: list[str] = []
        image, target, problem = self._load(index)
        if problem:
            bad.append(problem)
            if not self.substitute:
                return None, target, tuple(bad)
            for step in range(1, _SUBSTITUTE_TRIES + 1):
                image, target, problem = self._load((index + step) % len(self.samples))
                if not problem:
                    break
                bad.append(problem)
            else:
                raise DataError(f"--data_path {self.root}: {_SUBSTITUTE_TRIES + 1} unreadable images in a row, "
                                f"first: {bad[0]}")
        if transform is not None:
            if self.seed is None:
                image = transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_sample_seed(self.seed, epoch, index))
                    image = transform(image)
        return image, target, tuple(bad)


class SyntheticImages(Dataset):
    """Random normalised images and labels (``--synthetic``), for throughput runs without a dataset.

    Draws a small fixed bank of images once and indexes into it, so the loader costs next to nothing.
    """

    def __init__(self, length: int, image_size: int, num_classes: int, seed: int = 0, bank: int = 64):
        self.length = length
        self.num_classes = num_classes
        self.classes = [f"class_{i:04d}" for i in range(num_classes)]
        self.seed, self.bank = seed, min(bank, max(length, 1))
        self.set_image_size(image_size)

    def set_image_size(self, image_size: int) -> None:
        self.images = self._bank(image_size)

    def _bank(self, image_size: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randn(self.bank, 3, image_size, image_size, generator=gen)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        pass

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, int, tuple[str, ...]]:
        index = key.index if isinstance(key, SampleKey) else key
        if isinstance(key, SampleKey) and key.size is not None and key.size != self.images.shape[-1]:
            self.set_image_size(key.size)
        return self.images[index % len(self.images)], index % self.num_classes, ()


def collate_skipping(batch: list[tuple[torch.Tensor | None, int, tuple[str, ...]]]
                     ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack a batch, leaving out dropped (None) images; returns ``(images, targets, bad_paths)``."""
    kept = [(img, tgt) for img, tgt, _ in batch if img is not None]
    bad = [b for _, _, item_bad in batch for b in item_bad]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    return torch.stack([img for img, _ in kept]), torch.tensor([t for _, t in kept], dtype=torch.long), bad


def check_bad_fraction(split: str, bad: int, total: int, examples: Sequence[str] = ()) -> None:
    """Raise :class:`DataError` when more than :data:`MAX_BAD_FRACTION` of a split is unreadable."""
    if total > 0 and bad > MAX_BAD_FRACTION * total:
        first = f"; first: {examples[0]}" if examples else ""
        raise DataError(f"{split} split: {bad} of {total} images ({100.0 * bad / total:.1f}%) are unreadable, "
                        f"more than the {100 * MAX_BAD_FRACTION:g}% allowed{first}")


# --------------------------------------------------------------------------------------------- samplers ---

class TrainSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled with ``seed + epoch``, padded so every rank takes the same number of
    steps) that can start an epoch part-way, to resume from a checkpoint written mid-epoch. It yields
    :class:`SampleKey` s, so that persistent loader workers learn each sample's epoch and crop size."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0
        self.size: int | None = None

    def set_position(self, epoch: int, skip_samples: int = 0, size: int | None = None) -> None:
        """Start ``epoch`` (at train crop ``size`` px; None: the dataset's own transform), leaving out its first
        ``skip_samples`` samples on this rank."""
        self.set_epoch(epoch)
        self.skip = max(0, min(skip_samples, self.num_samples))
        self.size = size

    def __iter__(self):
        indices = list(super().__iter__())
        return iter([SampleKey(i, self.epoch, self.size) for i in indices[self.skip:]])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` gets indices ``r, r + w, ...``: every image exactly once across ranks, no padding
    (upstream padded and dropped the last partial batch, so its 8p accuracy was not over the whole val set)."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _worker_ignores_stop_signals(_worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the training process: a Ctrl-C (sent to the whole process group)
    or a ``kill``/scheduler SIGTERM to every process must not kill them in the middle of an epoch, since the
    trainer finishes its step, writes a checkpoint and then shuts its workers down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, *, train: bool,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader with :func:`collate_skipping`. Train drops a last partial batch (as upstream) unless that
    would leave no batch at all; val keeps every image.

    The train loader's workers persist across epochs (its :class:`TrainSampler` tells them the epoch and size):
    forking new ones every epoch cost the first step of each epoch 2-4 s on 2 cores, mostly copy-on-write page
    faults while the training process updated memory the fresh workers still shared. Validation, which runs
    every ``--eval-freq`` epochs, starts its workers when it runs."""
    full = getattr(sampler, "num_samples", len(sampler))  # a TrainSampler's length before any skip
    drop_last = train and full >= batch_size
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last, collate_fn=collate_skipping,
                      persistent_workers=train and workers > 0,
                      worker_init_fn=_worker_ignores_stop_signals if workers else None)


@contextlib.contextmanager
def workers_stopped_after(loader: DataLoader):
    """Shut ``loader``'s persistent workers down on leaving the block, however it is left.

    Left to garbage collection, they could outlive the training loop (a stopped run keeps a frame alive):
    at interpreter exit multiprocessing then terminates and joins them, and since they ignore SIGTERM (see
    :func:`_worker_ignores_stop_signals`) the join waited forever after a ``kill -INT`` of the trainer."""
    try:
        yield loader
    finally:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Batches a train loader from :func:`make_loader` yields for ``num_samples`` samples on one rank."""
    if num_samples >= batch_size:
        return num_samples // batch_size
    return math.ceil(num_samples / batch_size)


def accumulation_plan(num_samples: int, batch_size: int, accum_steps: int) -> tuple[int, int]:
    """``(optimizer steps per epoch, micro-batches per step)`` for ``--accum-steps``: the train loader's
    batches (:func:`steps_per_epoch`) are taken ``accum_steps`` at a time and a last incomplete group is left
    out, as a last partial batch is; an epoch with fewer batches than ``accum_steps`` makes one step of all."""
    micro_batches = steps_per_epoch(num_samples, batch_size)
    accum = max(1, min(accum_steps, micro_batches))
    return micro_batches // accum, accum


def resume_position(num_samples: int, images_per_step: int, epoch_steps: int, epoch_step: int,
                    epoch_images: int | None, saved_images_per_step: int | None) -> tuple[int, int]:
    """``(first step, samples to leave out)`` of an epoch resumed from a checkpoint written after ``epoch_step``
    optimizer steps of ``saved_images_per_step`` images and ``epoch_images`` samples of this process (None for
    both: a checkpoint that predates the counts). With the checkpoint's images per optimizer step (``-b`` x
    ``--accum-steps``, per process) the epoch goes on where it stopped. With others it goes on after the samples
    already trained on, with as many whole steps of the new size as the rest holds, numbered so that the epoch
    ends at its last step (``epoch_steps``, as the lr schedule expects); an epoch the checkpoint's run had
    finished stays finished."""
    if epoch_images is None or saved_images_per_step is None:
        return epoch_step, epoch_step * images_per_step
    seen = max(0, min(epoch_images, num_samples))
    if saved_images_per_step == images_per_step:
        return epoch_step, seen
    if num_samples - seen < saved_images_per_step:  # that run had no whole step left: its epoch was done
        return epoch_steps, seen
    return max(0, epoch_steps - (num_samples - seen) // images_per_step), seen
