"""``--progressive-sizes``: which image size each training epoch uses (no torch here: the main job's
pipeline reads it too)."""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["parse_progressive_sizes", "train_size_at"]


def parse_progressive_sizes(text: str | None, image_size: int) -> tuple[tuple[int, int], ...]:
    """``--progressive-sizes SIZE:EPOCHS[,SIZE:EPOCHS...]``: train the first EPOCHS epochs at SIZE px, the next
    phase at the next size, and the rest at ``--image-size``. Returns ``((size, epochs), ...)``."""
    if not text:
        return ()
    phases = []
    for part in text.split(","):
        size, _, count = part.strip().partition(":")
        try:
            phase = (int(size), int(count))
        except ValueError:
            raise ValueError(f"--progressive-sizes {text}: expected SIZE:EPOCHS[,SIZE:EPOCHS...], "
                             f"e.g. 48:12") from None
        if not 16 <= phase[0] <= image_size or phase[1] < 1:
            raise ValueError(f"--progressive-sizes {text}: each SIZE must be 16..--image-size ({image_size}) and "
                             f"each EPOCHS at least 1")
        phases.append(phase)
    return tuple(phases)


def train_size_at(epoch: int, image_size: int, phases: Sequence[tuple[int, int]]) -> int:
    """The train crop size of ``epoch`` under :func:`parse_progressive_sizes`'s phases (a pure function of the
    epoch, so a resumed run continues the same schedule)."""
    start = 0
    for size, count in phases:
        if epoch < start + count:
            return size
        start += count
    return image_size
