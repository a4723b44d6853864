"""Training input pipeline throughput against the training step it feeds.

1. images/s of the training loader alone (decode, random resized crop, flip, normalize, collate) on the
   sample dataset, per worker count;
2. main.py's training images/s on the same dataset with the default -j, against the same run on
   --synthetic data: if the loader starved the step, the first would fall below the second.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys

from common import ROOT, machine_info, markdown_table, measure, work_dir, write_report


def loader_images_per_second(data: str, size: int, batch: int, workers: int, repeats: int) -> dict:
    from seresnext.data import RobustImageFolder, TrainSampler, make_loader, train_transform
    dataset = RobustImageFolder(f"{data}/train", train_transform(size), substitute=True, seed=0)
    sampler = TrainSampler(dataset, num_replicas=1, rank=0, seed=0)
    loader = make_loader(dataset, sampler, batch, workers, train=True)

    def run() -> int:
        count = 0
        for images, _, _ in loader:
            count += images.shape[0]
        return count
    return measure(run, repeats=repeats, warmup=0)


def main_py_fps(extra: list[str], args) -> list[float]:
    command = [sys.executable, str(ROOT / "main.py"), "--device=cpu", f"-b={args.batch}", f"--image-size={args.size}",
               "--epochs=2", "--eval-freq=1000", "--print-freq=1000000", "--output-dir", args.workdir, "--overwrite",
               *args.main_args.split(), *extra]
    print("$", " ".join(command), flush=True)
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"main.py failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return [float(v) for v in re.findall(r"\* FPS@all ([0-9.]+)", out.stdout)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="sample dataset root (python -m seresnext.sample_data)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", default="0,1,2,4", help="worker counts for the loader-alone run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--main-args", default="--amp --channels-last", help="main.py settings for part 2")
    parser.add_argument("--skip-main", action="store_true", help="skip part 2")
    parser.add_argument("--workdir", default=None,
                        help="main.py's --output-dir (default: a new temporary folder)")
    parser.add_argument("--json", default="benchmarks/results/data.json")
    args = parser.parse_args()
    args.workdir = str(work_dir(args.workdir, "bench_data"))

    info = machine_info()
    results: dict = {"settings": vars(args)}
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        figures = loader_images_per_second(args.data, args.size, args.batch, workers, args.repeats)
        results[f"loader -j {workers}"] = figures
        rows.append([f"loader alone, -j {workers}", figures["median"], "-"])
    if not args.skip_main:
        real = main_py_fps([f"--data_path={args.data}"], args)
        synthetic = main_py_fps(["--synthetic"], args)
        results["main.py real data, default -j"] = real
        results["main.py synthetic"] = synthetic
        rows.append(["main.py training, sample data, default -j", statistics.median(real),
                     f"{statistics.median(real) / statistics.median(synthetic):.2f}"])
        rows.append(["main.py training, --synthetic", statistics.median(synthetic), "1.00"])
    table = markdown_table([f"input pipeline, batch {args.batch}, {args.size}x{args.size}", "images/s (median)",
                            "x synthetic"], rows)
    write_report(args.json, "Data loading", info, results, table)


if __name__ == "__main__":
    main()
