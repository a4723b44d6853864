"""Top-k accuracy of the runner's dumps against ``val_label.txt``, as upstream's vision_metric_ImageNet.py.

Upstream's rules, kept: the image name of ``X_1.txt`` is ``X``; a dump of 1000 values uses the label as
is, of 1001 values (a background class first) the label plus one; ``Top<k> accuracy`` counts images whose
label is among the k highest values, for k = 1 .. min(5, classes). Upstream's crashes are errors here: a dump
without a label, labels without dumps (unless ``allow_missing_dumps``), dumps of different lengths, an
empty folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from .formats import list_dumps, read_dump, read_val_label, result_json_dict

__all__ = ["MetricError", "MetricResult", "evaluate_dumps", "format_table", "TOPN"]

TOPN = 5


class MetricError(ValueError):
    """Dumps and labels that cannot be scored together; the message names the files."""


@dataclass
class MetricResult:
    num_images: int
    num_classes: int
    topk_accuracy: list[float]  # fractions, upstream's np.cumsum(hits) / count
    missing_dumps: list[str]
    ignored_files: list[str]
    labels_out_of_range: int

    def table(self) -> dict:
        """upstream's result.json dict."""
        return result_json_dict(self.num_images, self.num_classes, self.topk_accuracy)


def _examples(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def evaluate_dumps(dump_dir: str | PathLike, label_file: str | PathLike,
                   allow_missing_dumps: bool = False, topn: int = TOPN) -> MetricResult:
    """Score every dump of ``dump_dir`` against ``label_file``."""
    dump_dir = Path(dump_dir)
    if not dump_dir.is_dir():
        raise MetricError(f"{dump_dir}: no such folder (the runner writes result/dumpOutput_device<id>/)")
    labels = read_val_label(label_file)
    dumps, others = list_dumps(dump_dir)
    if not dumps:
        raise MetricError(f"{dump_dir}: no dump files (<image>_1.txt or <image>_1.bin) in the folder")
    unlabelled = [name for name in dumps if name not in labels]
    if unlabelled:
        raise MetricError(f"{len(unlabelled)} dump(s) in {dump_dir} have no label in {label_file}: "
                          f"{_examples(unlabelled)}")
    missing = [name for name in labels if name not in dumps]
    if missing and not allow_missing_dumps:
        raise MetricError(f"{len(missing)} image(s) labelled in {label_file} have no dump in {dump_dir}: "
                          f"{_examples(missing)} (did the runner fail on them? pass --allow-missing-dumps to "
                          f"score only the images that have dumps)")

    count_hit = np.zeros(topn)
    num_classes = None
    out_of_range = 0
    for name, path in dumps.items():
        prediction = read_dump(path)
        if num_classes is None:
            num_classes = len(prediction)
        elif len(prediction) != num_classes:
            raise MetricError(f"{path}: {len(prediction)} values, but other dumps have {num_classes}")
        label = labels[name] + 1 if num_classes == 1001 else labels[name]
        if label >= num_classes:
            out_of_range += 1
            continue
        sort_index = np.argsort(-prediction, kind="stable")
        hits = np.flatnonzero(sort_index[:topn] == label)
        if hits.size:
            count_hit[hits[0]] += 1
    count = len(dumps)
    res_count = min(num_classes, topn)
    accuracy = np.cumsum(count_hit) / count
    return MetricResult(num_images=count, num_classes=num_classes, topk_accuracy=list(accuracy[:res_count]),
                        missing_dumps=missing, ignored_files=others, labels_out_of_range=out_of_range)


def format_table(table: dict) -> str:
    """result.json's rows as a two-column text table."""
    rows = [(row["key"], row["value"]) for row in table["value"]]
    width = max(len(key) for key, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rule = f"+-{'-' * width}-+-{'-' * value_width}-+"
    lines = [table["title"], rule]
    lines += [f"| {key:<{width}} | {value:>{value_width}} |" for key, value in rows]
    lines.append(rule)
    return "\n".join(lines)
