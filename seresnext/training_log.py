"""The per-epoch training log (JSON lines) and its plot.

``<output-dir>/train_log.jsonl`` gets one JSON object per finished epoch:
``epoch``, ``lr`` (at the epoch's first step), ``train_loss``, ``train_top1``, ``train_top5``,
``images_per_second`` (global, steady state), ``seconds`` (train + validation wall time), ``steps``,
``skipped_images``, ``nonfinite_steps``, and ``val_loss``, ``val_top1``, ``val_top5`` (null on epochs that are
not validated). At the end of a run ``<output-dir>/train_curves.png`` plots loss, accuracy and learning rate.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from .formats import WriteError, atomic_write

__all__ = ["LOG_NAME", "PLOT_NAME", "append_record", "read_records", "drop_records_from", "plot_curves"]

LOG_NAME = "train_log.jsonl"
PLOT_NAME = "train_curves.png"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf
    return value


def append_record(path: str | PathLike, record: Mapping[str, Any]) -> None:
    """Append one epoch's record as a JSON line (a failed write raises :class:`WriteError` naming the file)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
    except OSError as exc:
        raise WriteError.naming(path, exc) from None


def read_records(path: str | PathLike) -> list[dict[str, Any]]:
    """All records of a log (an absent file has none); a torn last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def drop_records_from(path: str | PathLike, epoch: int) -> None:
    """Forget records of ``epoch`` and later: a resumed run writes them again."""
    records = read_records(path)
    kept = [r for r in records if r.get("epoch", -1) < epoch]
    if len(kept) != len(records):
        text = "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8")
        try:
            atomic_write(path, text)
        except OSError as exc:
            raise WriteError.naming(path, exc) from None


def plot_curves(records: Sequence[Mapping[str, Any]], png_path: str | PathLike) -> Path | None:
    """Plot loss, top-1/top-5 and learning rate per epoch to a PNG; None when there is nothing to plot."""
    if not records:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]

    def series(key: str) -> tuple[list[int], list[float]]:
        pairs = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        axes[0].plot(*series(key), marker="o", label=label)
    axes[0].set_title("loss")
    for key, label in (("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5")):
        axes[1].plot(*series(key), marker="o", label=label)
    axes[1].set_title("accuracy (%)")
    axes[2].plot(*series("lr"), marker="o")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(epochs) == 1:
            ax.set_xticks(epochs)
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
