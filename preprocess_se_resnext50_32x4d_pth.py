"""JPEG folder to one ``.bin`` per image (float32 CHW, 3x224x224, no header), byte-identical to upstream.

    python preprocess_se_resnext50_32x4d_pth.py /data/imagenet/val_flat ./prep_bin [-j N] [--resume]

Upstream's algorithm (resize the short side to 256, centre crop 224, /255, ImageNet mean/std) on all cores,
in sorted order, each file written atomically. Files that fail (not an image, truncated) are listed at the
end and the exit status is 1; the others are still written.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tqdm import tqdm

from seresnext.cli import run_main
from seresnext.preprocess import CROP_SIZE, RESIZE_SIZE, default_jobs, list_images, preprocess_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="preprocess_se_resnext50_32x4d_pth.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jpeg_dir", help="folder of images (flat, e.g. ILSVRC2012 val)")
    parser.add_argument("bin_dir", help="output folder for <name>.bin files (created if missing)")
    parser.add_argument("-j", "--jobs", type=int, default=default_jobs(),
                        help="worker processes (default: all cores, %(default)s here)")
    parser.add_argument("--resume", action="store_true",
                        help="skip images whose .bin already exists with the right size")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--resize", type=int, default=RESIZE_SIZE,
                        help="short side after resizing (default %(default)s, upstream)")
    parser.add_argument("--crop", type=int, default=CROP_SIZE,
                        help="centre crop size (default %(default)s, upstream); for models trained at "
                             "other sizes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise ValueError(f"-j/--jobs must be at least 1, got {args.jobs}")
    if not 0 < args.crop <= args.resize:
        raise ValueError(f"--crop {args.crop} must be positive and at most --resize {args.resize}")
    total = len(list_images(args.jpeg_dir))
    with tqdm(total=total, unit="img", disable=args.no_progress or None, file=sys.stderr) as bar:
        report = preprocess_folder(args.jpeg_dir, args.bin_dir, jobs=args.jobs, resume=args.resume,
                                   progress=bar.update, resize=args.resize, crop=args.crop)
    print(f"preprocess: {report.written} written, {report.skipped} skipped (already done), "
          f"{len(report.failed)} failed -> {args.bin_dir}")
    for name, reason in report.failed:
        print(f"  failed: {name}: {reason}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main, "preprocess_se_resnext50_32x4d_pth.py"))
