"""The memory check's estimate against the real peak, per batch size, image size and precision.

For each case main.py runs in a fresh process and the table holds what its "=> memory:" line estimated next to the
peak that process really reached (its ru_maxrss, read by the parent with wait4; on cuda the "peak memory" of
main.py's last epoch summary, which is the allocator's peak reserve). Training cases run 2 epochs of 2 steps on a
small generated ImageFolder (2 x batch train images, batch val images, -j 0), validating each epoch, so the
checkpoint written in the background after epoch 0 overlaps epoch 1's steps as in a real run; evaluation cases
run main.py --evaluate over one batch. Loader workers (-j) are processes of their own, not in these figures.

    python benchmarks/measure_memory.py --json benchmarks/results/memory.json
    python benchmarks/measure_memory.py --cases 224:fp32:cl:4,8,16,32 --device cuda
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine_info, markdown_table, work_dir, write_report

DEFAULT_CASES = ("224:fp32:cl:4,8,16,32", "224:bf16:cl:4,8,16,32", "224:bf16:nchw:8,16,32",
                 "64:fp32:cl:16,32,64,128", "64:bf16:cl:16,32,64,128", "eval:224:fp32:cl:32,64,128",
                 "eval:224:bf16:nchw:32,64,128")
ESTIMATE = re.compile(r"^=> memory: .* needs about ([\d.]+) GiB; ([\d.]+) GiB is available", re.M)
PEAK = re.compile(r"\| peak memory ([\d.]+) GiB$", re.M)
GIB = 1024 ** 3


def parse_cases(specs: list[str]) -> list[tuple[bool, int, str, bool, int]]:
    """``[eval:]SIZE:fp32|bf16:cl|nchw:B1,B2,...`` to (evaluate, size, dtype, channels_last, batch) cases."""
    cases = []
    for spec in specs:
        evaluate = spec.startswith("eval:")
        size, dtype, layout, batches = spec.removeprefix("eval:").split(":")
        if dtype not in ("fp32", "bf16") or layout not in ("cl", "nchw"):
            raise SystemExit(f"--cases {spec}: expected [eval:]SIZE:fp32|bf16:cl|nchw:B1,B2,...")
        cases += [(evaluate, int(size), dtype, layout == "cl", int(b)) for b in batches.split(",")]
    return cases


def make_dataset(root: Path, batch: int) -> Path:
    """2 classes, ``batch`` train images each (2 steps per epoch at -b batch) and ``batch`` val images."""
    import numpy as np
    from PIL import Image
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(0)
    for split, per_class in (("train", batch), ("val", (batch + 1) // 2)):
        for label in range(2):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.JPEG", quality=90)
    (root / "done").write_text("")
    return root


def run_case(python: str, data: Path, out: Path, device: str, evaluate: bool, size: int, dtype: str,
             channels_last: bool, batch: int, workers: int) -> dict:
    cmd = [python, "main.py", "--data_path", str(data), "--device", device, "-b", str(batch), "--image-size", str(size),
           "-j", str(workers), "--epochs", "2", "--eval-freq", "1", "--print-freq", "1", "--output-dir", str(out),
           "--overwrite", "--seed", "0"]
    cmd += ["--channels-last"] if channels_last else []
    cmd += ["--amp-dtype", "bfloat16"] if dtype == "bf16" else []
    cmd += ["--evaluate"] if evaluate else []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    estimate = ESTIMATE.search(output)
    peaks = PEAK.findall(output)
    measured = usage.ru_maxrss * 1024 if device == "cpu" else (float(peaks[-1]) * GIB if peaks else None)
    return {"evaluate": evaluate, "size": size, "dtype": dtype, "channels_last": channels_last, "batch": batch,
            "workers": workers, "estimate_gib": float(estimate.group(1)), "available_gib": float(estimate.group(2)),
            "measured_gib": measured / GIB if measured else None, "seconds": round(seconds, 1),
            "command": " ".join(cmd[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        help="[eval:]SIZE:fp32|bf16:cl|nchw:B1,B2,... (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--workers", type=int, default=0, help="-j of the runs (default 0: the main process only)")
    parser.add_argument("--workdir", default=None, help="datasets and run folders (default: a new temporary folder)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    work = work_dir(args.workdir, "measure_memory")
    python = sys.executable
    rows, results = [], []
    for evaluate, size, dtype, channels_last, batch in parse_cases(args.cases):
        data = make_dataset(work / f"data_{batch}", batch)
        result = run_case(python, data, work / "out", args.device, evaluate, size, dtype, channels_last, batch,
                          args.workers)
        results.append(result)
        error = (result["estimate_gib"] / result["measured_gib"] - 1) * 100 if result["measured_gib"] else None
        rows.append(["evaluate" if evaluate else "train", size, dtype, "channels-last" if channels_last else "NCHW",
                     batch, f"{result['estimate_gib']:.2f}", f"{result['measured_gib']:.2f}",
                     f"{error:+.0f}%" if error is not None else "n/a"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    table = markdown_table(["step", "px", "precision", "layout", "batch", "estimate GiB", "measured peak GiB",
                            "estimate vs measured"], rows)
    write_report(args.json, f"Memory of a step: estimate vs measured ({args.device})", machine_info(), results,
                 table)


if __name__ == "__main__":
    main()
