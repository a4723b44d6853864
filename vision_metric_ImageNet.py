"""Top-1..5 accuracy of the offline runner's dumps, written as upstream's result.json.

    python vision_metric_ImageNet.py result/dumpOutput_device0/ ./val_label.txt ./ result.json
    python vision_metric_ImageNet.py ./ais_out/2024_01_01-12_00_00/ ./val_label.txt ./ result.json

Arguments: the dump folder (benchmark.x86_64's <image>_1.txt, ais_bench's <image>_0.txt / .bin / .npy,
msame's <image>_output_0.txt; other files are skipped), the labels (``ILSVRC2012_val_00000001.JPEG 65`` per
line), the folder for the result file (created if missing) and its name. Prints the same numbers as a table.
Labelled images without a dump are left out with a warning, as upstream scored only what it found.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from seresnext.cli import run_main
from seresnext.output_formats import write_result_json
from seresnext.metric import evaluate_dumps, format_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vision_metric_ImageNet.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump_dir", help="the runner's dumps, e.g. result/dumpOutput_device0/")
    parser.add_argument("label_file", help="val_label.txt")
    parser.add_argument("result_dir", help="folder for the result file")
    parser.add_argument("result_name", help="result file name, e.g. result.json")
    parser.add_argument("--strict", action="store_true",
                        help="labelled images without a dump are an error (default: scored without them, with a "
                             "warning, as upstream)")
    parser.add_argument("--allow-missing-dumps", action="store_true", help=argparse.SUPPRESS)  # an old flag of ours
    args = parser.parse_args(argv)
    if args.allow_missing_dumps:
        print("note: --allow-missing-dumps is the default now (labelled images without a dump are left out, with a "
              "warning); the flag is ignored", file=sys.stderr)
    result = evaluate_dumps(args.dump_dir, args.label_file, strict=args.strict)
    os.makedirs(args.result_dir, exist_ok=True)
    out = os.path.join(args.result_dir, args.result_name)
    table = result.table()
    write_result_json(out, table)
    print(format_table(table))
    if result.missing_dumps:
        print(f"warning: {len(result.missing_dumps)} of the {len(result.missing_dumps) + result.num_images} images "
              f"labelled in {args.label_file} have no dump in {args.dump_dir}; scored the {result.num_images} that "
              f"have one (--strict makes this an error)", file=sys.stderr)
    if result.ignored_files:
        print(f"note: skipped {len(result.ignored_files)} file(s) in {args.dump_dir} that are not dumps "
              f"(e.g. {result.ignored_files[0]})", file=sys.stderr)
    if result.other_outputs:
        print(f"note: scored each image's first model output; skipped {len(result.other_outputs)} dump(s) of later "
              f"outputs (e.g. {result.other_outputs[0]})", file=sys.stderr)
    if result.labels_out_of_range:
        hint = (f"labels run {result.label_range[0]}..{result.label_range[1]}: is {args.label_file} 1-based? They "
                f"must be 0-based (make_val_label.py writes them)" if result.one_based_hint()
                else "are the labels for this model's classes?")
        print(f"warning: {result.labels_out_of_range} label(s) are not below the {result.num_classes} model "
              f"outputs (counted as misses): {hint}", file=sys.stderr)
    print(f"vision_metric_ImageNet: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "vision_metric_ImageNet.py"))
