"""The offline runner, in the role of Ascend's ``benchmark.x86_64``, with the same ``-name=value`` options.

    python benchmark.py -model_type=vision -om_path=seresnext50_32x4d_16.onnx -device_id=0 -batch_size=16 \\
        -input_text_path=seresnext50_val.info -input_width=224 -input_height=224 -output_binary=false \\
        -useDvpp=false
    python benchmark.py -model_type=vision -om_path=seresnext50_32x4d_aipp_16.onnx -device_id=0 -batch_size=16 \\
        -input_text_path=ImageNet.info -input_width=256 -input_height=256 -useDvpp=true -output_binary=false
    python benchmark.py -round=20 -om_path=seresnext50_32x4d_16.onnx -device_id=0 -batch_size=16   # pure inference

Writes result/dumpOutput_device<id>/<image>_1.txt (or .bin) and
result/perf_vision_batchsize_<bs>_device_<id>.txt. Runs ONNX models on ONNX Runtime (CPU, or CUDA /
TensorRT when present) and .om models through Ascend's runtime when it is installed.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tqdm import tqdm

from seresnext.cli import run_main
from seresnext.runner import (RunnerOptions, open_backend, pure_summary_lines, run_dataset, run_pure_inference,
                              summary_lines)

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def option(name: str, **kwargs) -> None:
        parser.add_argument(f"-{name}", f"--{name}", dest=name, **kwargs)

    option("model_type", default="vision", help="only vision")
    option("om_path", required=True, help="model: .onnx (ONNX Runtime) or .om (Ascend runtime)")
    option("device_id", type=int, default=0, help="device index (CUDA / Ascend); names the output files")
    option("batch_size", type=int, default=1, help="images per model call; must match a static batch")
    option("input_text_path", default=None, help=".info file from get_info.py")
    option("input_width", type=int, default=224, help="model input width (AIPP models: the source width)")
    option("input_height", type=int, default=224, help="model input height (AIPP models: the source height)")
    option("output_binary", type=_bool, default=False, help="write dumps as raw float32 .bin instead of .txt")
    option("useDvpp", type=_bool, default=False, help="JPEG input: decode, resize, feed an AIPP model")
    option("round", type=int, default=0, help="pure inference: N batches of random data, no input files")
    option("provider", default="auto", help="ONNX Runtime execution provider: auto, cpu, cuda, tensorrt")
    option("threads", type=int, default=0, help="intra-op threads (default: ONNX Runtime's, one per core)")
    option("warmup", type=int, default=2, help="untimed batches before the run (default 2)")
    option("loaders", type=int, default=2, help="threads reading and preprocessing input (default 2)")
    option("prefetch", type=int, default=2, help="batches prepared ahead of the model (default 2)")
    option("result_dir", default="result", help="output folder (default ./result)")
    option("progress", type=_bool, default=True, help="show a progress bar on a terminal")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("warmup", "threads"):
        if getattr(args, name) < 0:
            raise ValueError(f"-{name}={getattr(args, name)}: must not be negative")
    for name in ("loaders", "prefetch"):
        if getattr(args, name) < 1:
            raise ValueError(f"-{name}={getattr(args, name)}: must be at least 1")
    options = RunnerOptions(
        om_path=args.om_path, batch_size=args.batch_size, device_id=args.device_id,
        input_text_path=args.input_text_path, input_width=args.input_width, input_height=args.input_height,
        output_binary=args.output_binary, use_dvpp=args.useDvpp, model_type=args.model_type, rounds=args.round,
        provider=args.provider, threads=args.threads, warmup=args.warmup, loaders=args.loaders,
        prefetch=args.prefetch, result_dir=args.result_dir)
    backend = open_backend(options)
    if options.rounds and not options.input_text_path:
        rate, latencies, path, _ = run_pure_inference(options, backend)
        print(pure_summary_lines(rate, latencies, path, options.batch_size, backend.description), end="")
        return 0
    with tqdm(unit="img", disable=not args.progress or None, file=sys.stderr) as bar:
        result = run_dataset(options, backend, progress=bar.update)
    print(summary_lines(result, options.batch_size), end="")
    print(f"[INFO] dumps in {result.dump_dir}, perf in {result.perf_file}")
    if result.stale_dumps:
        print(f"[WARN] {result.dump_dir} also holds {result.stale_dumps} dumps from earlier runs (not in "
              f"{options.input_text_path}); the metric will count them", file=sys.stderr)
    for where, reason in result.failed:
        print(f"[ERROR] {where}: {reason}", file=sys.stderr)
    if result.failed:
        print(f"[ERROR] {len(result.failed)} image(s) failed; {result.images} processed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "benchmark.py"))
