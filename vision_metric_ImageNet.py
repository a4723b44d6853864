"""Top-1..5 accuracy of the offline runner's dumps, written as upstream's result.json.

    python vision_metric_ImageNet.py result/dumpOutput_device0/ ./val_label.txt ./ result.json

Arguments: the dump folder, the labels (``ILSVRC2012_val_00000001.JPEG 65`` per line), the folder for the
result file (created if missing) and its name. Prints the same numbers as a table.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from seresnext.cli import run_main
from seresnext.formats import write_result_json
from seresnext.metric import evaluate_dumps, format_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vision_metric_ImageNet.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump_dir", help="the runner's dumps, e.g. result/dumpOutput_device0/")
    parser.add_argument("label_file", help="val_label.txt")
    parser.add_argument("result_dir", help="folder for the result file")
    parser.add_argument("result_name", help="result file name, e.g. result.json")
    parser.add_argument("--allow-missing-dumps", action="store_true",
                        help="score only the labelled images that have dumps (default: it is an error)")
    args = parser.parse_args(argv)
    result = evaluate_dumps(args.dump_dir, args.label_file, allow_missing_dumps=args.allow_missing_dumps)
    os.makedirs(args.result_dir, exist_ok=True)
    out = os.path.join(args.result_dir, args.result_name)
    table = result.table()
    write_result_json(out, table)
    print(format_table(table))
    if result.missing_dumps:
        print(f"note: {len(result.missing_dumps)} labelled images have no dump and are not counted",
              file=sys.stderr)
    if result.ignored_files:
        print(f"note: ignored {len(result.ignored_files)} file(s) in {args.dump_dir} that are not "
              f"<image>_1.txt/.bin dumps (e.g. {result.ignored_files[0]})", file=sys.stderr)
    if result.labels_out_of_range:
        print(f"warning: {result.labels_out_of_range} label(s) are not below the {result.num_classes} model "
              f"outputs (counted as misses): are the labels for this model's classes?", file=sys.stderr)
    print(f"vision_metric_ImageNet: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "vision_metric_ImageNet.py"))
