"""Preprocessing throughput: preprocess_se_resnext50_32x4d_pth.py against upstream's algorithm.

Both candidates read the same JPEG folder. The baseline is upstream's code as it was written (one process:
PIL resize, float32 conversion and normalisation of the whole resized image, crop, CHW), kept in
tests/offline_helpers.py, where the tests also use it; ours is seresnext.preprocess with -j 1 and -j N.
Every output is checked byte for byte against the baseline's before any figure is printed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine_info, markdown_table, measure, write_report

sys.path.insert(0, str(ROOT / "tests"))
from offline_helpers import upstream_preprocess_bytes  # noqa: E402  (the upstream reference algorithm)

from seresnext.formats import bin_file_name  # noqa: E402
from seresnext.preprocess import list_images, preprocess_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="a flat JPEG folder, e.g. <sample>/val_flat")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes for the parallel run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/preprocess.json")
    args = parser.parse_args()

    files = list_images(args.images)
    reference = {bin_file_name(f.name): upstream_preprocess_bytes(f) for f in files}
    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))

    def upstream() -> int:
        for f in files:
            (work / "upstream" / bin_file_name(f.name)).write_bytes(upstream_preprocess_bytes(f))
        return len(files)

    def ours(jobs: int):
        def run() -> int:
            report = preprocess_folder(args.images, work / f"ours_j{jobs}", jobs=jobs)
            assert report.ok, report.failed
            return report.written
        return run

    (work / "upstream").mkdir()
    results = {"settings": vars(args), "images": len(files)}
    candidates = {"upstream algorithm, 1 process": upstream, "ours -j 1": ours(1),
                  f"ours -j {args.jobs}": ours(args.jobs)}
    for name, run in candidates.items():
        results[name] = measure(run, repeats=args.repeats, warmup=1)
    for folder in work.iterdir():
        for out_name, expected in reference.items():
            if (folder / out_name).read_bytes() != expected:
                raise SystemExit(f"{folder / out_name}: bytes differ from upstream's algorithm")
    base = results["upstream algorithm, 1 process"]["median"]
    rows = [[name, results[name]["median"], results[name]["median"] / base] for name in candidates]
    table = markdown_table([f"preprocessing, {len(files)} JPEGs (identical bytes checked)", "images/s (median)",
                            "x upstream"], rows)
    shutil.rmtree(work)
    write_report(args.json, "Preprocessing", info=machine_info(), results=results, table=table)


if __name__ == "__main__":
    main()
