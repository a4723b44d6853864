"""Top-k accuracy of the runner's dumps against ``val_label.txt``, as upstream's vision_metric_ImageNet.py.

Upstream's rules, kept: a dump file's image name is its name without the ``_<k>.txt`` suffix; a dump of 1000
values uses the label as is, of 1001 values (a background class first) the label plus one; ``Top<k>
accuracy`` counts images whose label is among the k highest values, for k = 1 .. min(5, classes); images
labelled but without a dump are left out (the runner was run on a subset), which ``strict`` makes an error.
Upstream's crashes are errors here: a dump without a label, dumps of different lengths, an empty folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from .formats import read_val_label
from .output_formats import list_dumps, read_dump, result_json_dict

__all__ = ["MetricError", "MetricResult", "evaluate_dumps", "format_table", "TOPN"]

TOPN = 5


class MetricError(ValueError):
    """Dumps and labels that cannot be scored together; the message names the files."""


@dataclass
class MetricResult:
    num_images: int
    num_classes: int
    topk_accuracy: list[float]  # fractions, upstream's np.cumsum(hits) / count
    missing_dumps: list[str]  # labelled images without a dump (not scored)
    ignored_files: list[str]  # files of the dump folder that are not dumps
    other_outputs: list[str]  # dumps of a later model output (not scored)
    labels_out_of_range: int
    label_range: tuple[int, int]  # smallest and largest label of the scored images

    def table(self) -> dict:
        """upstream's result.json dict."""
        return result_json_dict(self.num_images, self.num_classes, self.topk_accuracy)

    def one_based_hint(self) -> bool:
        """Labels 1..classes: the label file looks 1-based (they must be 0-based)."""
        return self.label_range[0] >= 1 and self.label_range[1] == self.num_classes


def _examples(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def evaluate_dumps(dump_dir: str | PathLike, label_file: str | PathLike, strict: bool = False,
                   topn: int = TOPN) -> MetricResult:
    """Score every dump of ``dump_dir`` against ``label_file``; ``strict``: labels without dumps are an error."""
    dump_dir = Path(dump_dir)
    if not dump_dir.is_dir():
        raise MetricError(f"{dump_dir}: no such folder (the runner writes result/dumpOutput_device<id>/, "
                          f"ais_bench <output>/<date-time>/)")
    labels = read_val_label(label_file)
    listing = list_dumps(dump_dir)
    dumps = listing.dumps
    if not dumps:
        raise MetricError(f"{dump_dir}: no dump files (<image>_<k>.txt, .bin or .npy) in the folder")
    unlabelled = [name for name in dumps if name not in labels]
    if unlabelled:
        raise MetricError(f"{len(unlabelled)} dump(s) in {dump_dir} have no label in {label_file}: "
                          f"{_examples(unlabelled)}")
    missing = [name for name in labels if name not in dumps]
    if missing and strict:
        raise MetricError(f"--strict: {len(missing)} image(s) labelled in {label_file} have no dump in {dump_dir}: "
                          f"{_examples(missing)} (did the runner fail on them?)")

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
    scored = [labels[name] for name in dumps]
    return MetricResult(num_images=count, num_classes=num_classes, topk_accuracy=list(accuracy[:res_count]),
                        missing_dumps=missing, ignored_files=listing.ignored, other_outputs=listing.other_outputs,
                        labels_out_of_range=out_of_range, label_range=(min(scored), max(scored)))


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
