"""Where an ONNX model spends its time in ONNX Runtime (CPU): kernel time per operator type, from ONNX
Runtime's own profiler, for one or more models side by side on the same random batch.

Used for the build's grouped-convolution rewrite: profile a build with and without it, e.g.

    bash se_resnext50_32x4d_atc.sh --model=m.onnx --output_dir=a --regroup=true
    bash se_resnext50_32x4d_atc.sh --model=m.onnx --output_dir=b
    python benchmarks/profile_ort.py a/seresnext50_32x4d_16.onnx b/seresnext50_32x4d_16.onnx

Kernel times are summed over ``--runs`` batches after one warm-up batch and reported per batch; a model's
layout reorders (NCHWc) show up as ReorderInput / ReorderOutput. The models are profiled in turn, ``--rounds``
times (A, B, A, B, ...), and each figure is the median over the rounds, so that a slow spell of a shared
machine does not land on one model only.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
from pathlib import Path

from common import machine_info, markdown_table, write_report


def profile(path: str, runs: int, seed: int = 0) -> dict[str, float]:
    """Milliseconds per batch spent in each operator type, and the total."""
    import numpy as np
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="profile_ort_") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "trace")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        model_input = session.get_inputs()[0]
        if any(not isinstance(d, int) for d in model_input.shape):
            raise SystemExit(f"{path}: input {model_input.name}{model_input.shape} is not static; profile a build")
        rng = np.random.default_rng(seed)
        if model_input.type == "tensor(uint8)":
            feed = rng.integers(0, 256, size=model_input.shape, dtype=np.uint8)
        else:
            feed = rng.standard_normal(model_input.shape, dtype=np.float32)
        for _ in range(runs + 1):
            session.run(None, {model_input.name: feed})
        events = json.loads(Path(session.end_profiling()).read_text())
    # the first batch is a warm-up: leave out the kernels that ran inside the first model_run
    batches = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    if len(batches) != runs + 1:
        raise SystemExit(f"{path}: expected {runs + 1} model_run events in the profile, found {len(batches)}")
    warm_end = batches[0][1]
    per_op: collections.Counter = collections.Counter()
    for event in events:
        if (event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
                and event["ts"] > warm_end):
            per_op[event["args"].get("op_name", "?")] += event["dur"] / 1000.0 / runs
    per_op["total"] = sum(per_op.values())
    return dict(per_op)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="static-shape ONNX models (builds)")
    parser.add_argument("--runs", type=int, default=5, help="profiled batches per model")
    parser.add_argument("--rounds", type=int, default=3, help="times each model is profiled, in turn")
    parser.add_argument("--json", default="benchmarks/results/profile_ort.json")
    args = parser.parse_args()
    rounds = [{model: profile(model, args.runs) for model in args.models} for _ in range(args.rounds)]
    figures = {model: {op: statistics.median(r[model].get(op, 0.0) for r in rounds)
                       for op in {op for r in rounds for op in r[model]}} for model in args.models}
    ops = sorted({op for f in figures.values() for op in f if op != "total"},
                 key=lambda op: -max(f.get(op, 0.0) for f in figures.values()))
    headers = ["ms per batch", *(Path(m).parent.name + "/" + Path(m).name for m in args.models)]
    rows = [[op, *(figures[m].get(op, 0.0) for m in args.models)] for op in [*ops, "total"]]
    note = (f"(ONNX Runtime profiler, kernel time per batch: mean of {args.runs} batches, median of "
            f"{args.rounds} rounds)")
    table = markdown_table(headers, rows) + "\n\n" + note
    write_report(args.json, "ONNX Runtime kernel time by operator", machine_info(),
                 {"settings": vars(args), "models": figures, "rounds": rounds}, table)


if __name__ == "__main__":
    main()
