"""Write ``val_label.txt`` (``ILSVRC2012_val_00000001.JPEG 65``, 0-based class in sorted-WNID order).

    python make_val_label.py devkit ILSVRC2012_devkit_t12.tar.gz ./val_label.txt
    python make_val_label.py folder /data/imagenet/val ./val_label.txt     # val/<wnid>/<image> layout

The devkit mode reads ``meta.mat`` (needs scipy) and ``ILSVRC2012_validation_ground_truth.txt`` straight
from the archive (or an unpacked devkit folder). The folder mode numbers the class folders in sorted order.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from seresnext.cli import run_main
from seresnext.formats import write_val_label
from seresnext.imagenet import labels_from_class_folders, labels_from_devkit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make_val_label.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source_type", choices=("devkit", "folder"))
    parser.add_argument("source", help="ILSVRC2012_devkit_t12.tar.gz (or its folder), or a val/<wnid>/ folder")
    parser.add_argument("out", help="the val_label.txt to write")
    args = parser.parse_args(argv)
    reader = labels_from_devkit if args.source_type == "devkit" else labels_from_class_folders
    classes, rows = reader(args.source)
    count = write_val_label(args.out, rows)
    print(f"make_val_label: {count} labels over {len(classes)} classes -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "make_val_label.py"))
