"""The main job's training stage, one line per finished epoch, with the time left at this speed.

The launch wrappers write main.py's output to their own log (``test/output/<id>/train_<id>.log``, as upstream's
do), so the terminal would show nothing for the whole stage: 18 minutes of the sample recipe on an AVX2-only
CPU. :class:`EpochProgress` follows main.py's ``train_log.jsonl`` instead and prints, for every epoch it adds::

    train: epoch 4/25: 48 px, 37 s, 27.8 images/s, loss 2.073; about 15 min left at this speed
"""
from __future__ import annotations

import signal
import statistics
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .training_log import read_records

__all__ = ["EpochProgress", "seconds_left", "progress_line"]

Record = Mapping[str, Any]


def seconds_left(done: Sequence[Record], epochs: int, size_at: Callable[[int], int]) -> float | None:
    """Seconds the epochs after the last of ``done`` take at the speed ``done`` ran (median seconds per epoch of
    each image size; validation included). A size not run yet scales the nearest one run by the side length:
    a step's cost grows about linearly with it at these sizes (measured: 48 px 0.69-0.73x and 56 px 0.88x the
    cost of 64 px). None when nothing ran yet."""
    per_size: dict[int, list[float]] = {}
    for record in done:
        if record.get("seconds") and record.get("image_size"):
            per_size.setdefault(int(record["image_size"]), []).append(float(record["seconds"]))
    if not per_size:
        return None
    median = {size: statistics.median(seconds) for size, seconds in per_size.items()}
    total = 0.0
    for epoch in range(int(done[-1]["epoch"]) + 1, epochs):
        size = size_at(epoch)
        nearest = min(median, key=lambda measured: abs(measured - size))
        total += median[nearest] * size / nearest
    return total


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def progress_line(record: Record, epochs: int, left: float | None) -> str:
    """``train: epoch N/EPOCHS: SIZE px, S s, R images/s, loss L[, val top-1 A][; about T left at this speed]``."""
    parts = [f"{record.get('image_size')} px", f"{record.get('seconds') or 0:.0f} s"]
    if record.get("images_per_second"):
        parts.append(f"{record['images_per_second']:.1f} images/s")
    if record.get("train_loss") is not None:
        parts.append(f"loss {record['train_loss']:.3f}")
    if record.get("val_top1") is not None:
        parts.append(f"val top-1 {record['val_top1']:.1f}")
    line = f"train: epoch {int(record['epoch']) + 1}/{epochs}: {', '.join(parts)}"
    if left:
        line += f"; about {_duration(left)} left at this speed"
    return line


class EpochProgress:
    """While the ``with`` block runs, print a :func:`progress_line` for every record main.py adds to ``log``
    (polled every ``poll`` seconds, and once more at the end). Records already there when it starts (an
    earlier or interrupted run) are not printed, and do not count for the speed."""

    def __init__(self, log: Path, epochs: int, size_at: Callable[[int], int], say: Callable[[str], None],
                 poll: float = 2.0):
        self.log, self.epochs, self.size_at, self.say, self.poll = Path(log), epochs, size_at, say, poll
        self._before: list[dict] = []
        self._done: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="epoch-progress", daemon=True)

    def __enter__(self) -> EpochProgress:
        self._before = read_records(self.log)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._report()

    def _follow(self) -> None:
        if hasattr(signal, "pthread_sigmask"):  # Ctrl-C must reach the main thread: it stops the stage's command
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while not self._stop.wait(self.poll):
            self._report()

    def _report(self) -> None:
        try:
            records = read_records(self.log)
        except OSError:  # a file being replaced; the next poll reads it
            return
        for record in records:
            if record in self._before or record in self._done or "epoch" not in record:
                continue
            self._done.append(record)
            self.say(progress_line(record, self.epochs, seconds_left(self._done, self.epochs, self.size_at)))
