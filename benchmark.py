"""The offline runner, in the role of Ascend's runners: ``benchmark.x86_64``'s ``-name=value`` options, or
ais_bench's ``--name value`` options (the generation upstream moved to in late 2022).

benchmark.x86_64's interface (writes result/dumpOutput_device<id>/<image>_1.txt or .bin and
result/perf_vision_batchsize_<bs>_device_<id>.txt):

    python benchmark.py -model_type=vision -om_path=seresnext50_32x4d_16.onnx -device_id=0 -batch_size=16 \\
        -input_text_path=seresnext50_val.info -input_width=224 -input_height=224 -output_binary=false \\
        -useDvpp=false
    python benchmark.py -model_type=vision -om_path=seresnext50_32x4d_aipp_16.onnx -device_id=0 -batch_size=16 \\
        -input_text_path=ImageNet.info -input_width=256 -input_height=256 -useDvpp=true -output_binary=false
    python benchmark.py -round=20 -om_path=seresnext50_32x4d_16.onnx -device_id=0 -batch_size=16   # pure inference

ais_bench's interface (as ``python3 -m ais_bench``; writes OUTPUT/<YYYY_MM_DD-HH_MM_SS>/<image>_0.txt, .bin or
.npy, or OUTPUT/<output_dirname>/..., and OUTPUT/<same name>_summary.json):

    python benchmark.py --model seresnext50_32x4d_16.onnx --input prep_bin/ --output ./ --outfmt TXT --batchsize 16
    python benchmark.py --model seresnext50_32x4d_16.onnx --loop 20                         # pure inference

Runs ONNX models on ONNX Runtime (CPU, or CUDA / TensorRT when present) and .om models through Ascend's
runtime (the installed ais_bench package) when it is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import time
from collections.abc import Sequence
from os import PathLike

import numpy as np
from tqdm import tqdm

from seresnext.cli import run_main
from seresnext.output_formats import (ais_summary_dict, ais_summary_lines, perf_lines, pure_infer_summary,
                                     write_ais_summary)
from seresnext.runner import (RunInterrupted, RunnerError, RunnerOptions, RunResult, entries_from_inputs,
                              open_backend, run_dataset, run_pure_inference)

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
# The flags of each interface (argparse dests); ours (provider, threads, loaders, prefetch, progress) serve both.
BENCHMARK_FLAGS = ("model_type", "om_path", "device_id", "batch_size", "input_text_path", "input_width",
                   "input_height", "output_binary", "useDvpp", "round", "warmup", "result_dir")
AIS_BENCH_FLAGS = ("model", "input", "output", "output_dirname", "outfmt", "batchsize", "device", "loop",
                   "warmup_count")
OUTFMT = {"TXT": "txt", "BIN": "bin", "NPY": "npy"}
# The runner's messages name benchmark.x86_64's flags; in ais_bench mode they name ais_bench's.
AIS_WORDS = {"-om_path=": "--model=", "-batch_size=": "--batchsize=", "-device_id=": "--device=",
             "-resume=": "--resume="}


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
    option("om_path", help="model: .onnx (ONNX Runtime) or .om (Ascend runtime)")
    option("device_id", type=int, default=0, help="device index (CUDA / Ascend); names the output files")
    option("batch_size", type=int, default=1, help="images per model call; must match a static batch")
    option("input_text_path", default=None, help=".info file from get_info.py")
    option("input_width", type=int, default=224, help="model input width (AIPP models: the source width)")
    option("input_height", type=int, default=224, help="model input height (AIPP models: the source height)")
    option("output_binary", type=_bool, default=False, help="write dumps as raw float32 .bin instead of .txt")
    option("useDvpp", type=_bool, default=False, help="JPEG input: decode, resize, feed an AIPP model")
    option("round", type=int, default=0, help="pure inference: N batches of random data, no input files")
    option("warmup", type=int, default=2, help="untimed batches before the run (default 2)")
    option("result_dir", default="result", help="output folder (default ./result)")

    ais = parser.add_argument_group("ais_bench's options (python3 -m ais_bench)")
    ais.add_argument("--model", "-m", dest="model", help="model: .onnx (ONNX Runtime) or .om (Ascend runtime)")
    ais.add_argument("--input", "-i", dest="input", default=None,
                     help="a folder of .bin/.npy files (one per image), or a comma list of files; without it: "
                          "pure inference on zeros")
    ais.add_argument("--output", "-o", dest="output", default=None,
                     help="write the outputs to OUTPUT/<YYYY_MM_DD-HH_MM_SS>/ and OUTPUT/<...>_summary.json "
                          "(default: write nothing)")
    ais.add_argument("--output_dirname", "--output-dirname", dest="output_dirname", default=None,
                     help="with --output: OUTPUT/<output_dirname>/ instead of the date and time (reruns overwrite)")
    ais.add_argument("--outfmt", dest="outfmt", default="BIN", choices=tuple(OUTFMT),
                     help="output file format (default BIN: raw float32)")
    ais.add_argument("--batchsize", dest="batchsize", type=int, default=None,
                     help="images per model call (default: the model's static batch, else 1)")
    ais.add_argument("--device", "-d", dest="device", type=int, default=0, help="device index (default 0)")
    ais.add_argument("--loop", "-l", dest="loop", type=int, default=1,
                     help="model calls per batch, each timed (default 1)")
    ais.add_argument("--warmup_count", "--warmup-count", dest="warmup_count", type=int, default=1,
                     help="untimed model calls before the run (default 1)")

    ours = parser.add_argument_group("ours (both interfaces)")

    def our_option(name: str, **kwargs) -> None:
        ours.add_argument(f"-{name}", f"--{name}", dest=name, **kwargs)

    our_option("provider", default="auto",
               help="auto (default: ONNX Runtime's CUDA provider when present, else OpenVINO when installed, else "
                    "ONNX Runtime on the CPU), cpu, cuda, tensorrt (ONNX Runtime) or openvino")
    our_option("threads", type=int, default=0, help="intra-op threads (default: ONNX Runtime's, one per core)")
    our_option("loaders", type=int, default=2, help="threads reading and preprocessing input (default 2)")
    our_option("prefetch", type=int, default=2, help="batches prepared ahead of the model (default 2)")
    our_option("progress", type=_bool, default=True, help="show a progress bar on a terminal")
    our_option("resume", type=_bool, default=False,
               help="continue an interrupted run: skip the images whose dump is already complete, process the rest "
                    "(ais_bench style: with --output and --output_dirname, the folder of the run to continue)")
    return parser


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests of the options that appear on the command line."""
    strings = parser._option_string_actions  # noqa: SLF001 (argparse has no public lookup)
    return {strings[token.split("=", 1)[0]].dest for token in argv
            if token.startswith("-") and token.split("=", 1)[0] in strings}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    given = _given(parser, argv)
    if args.threads < 0:
        raise ValueError(f"-threads={args.threads}: must not be negative")
    for name in ("loaders", "prefetch"):
        if getattr(args, name) < 1:
            raise ValueError(f"-{name}={getattr(args, name)}: must be at least 1")
    if args.model and args.om_path:
        raise ValueError("give -om_path (benchmark.x86_64's options) or --model (ais_bench's), not both")
    if args.model:
        foreign = sorted(given & set(BENCHMARK_FLAGS))
        if foreign:
            raise ValueError(f"-{foreign[0]} is a benchmark.x86_64 option; with --model use ais_bench's "
                             f"(--input, --output, --outfmt, --batchsize, --device, --loop, --warmup_count)")
        try:
            return run_ais_bench(args, argv)
        except RunnerError as exc:
            raise RunnerError(re.sub("|".join(f"(?<![\\w-]){re.escape(k)}" for k in AIS_WORDS),
                                     lambda m: AIS_WORDS[m.group(0)], str(exc))) from None
    if not args.om_path:
        raise ValueError("give the model: -om_path=M (benchmark.x86_64's options) or --model M (ais_bench's)")
    foreign = sorted(given & set(AIS_BENCH_FLAGS))
    if foreign:
        raise ValueError(f"--{foreign[0]} is an ais_bench option; use it with --model, not -om_path")
    if args.warmup < 0:
        raise ValueError(f"-warmup={args.warmup}: must not be negative")
    options = RunnerOptions(
        om_path=args.om_path, batch_size=args.batch_size, device_id=args.device_id,
        input_text_path=args.input_text_path, input_width=args.input_width, input_height=args.input_height,
        output_binary=args.output_binary, use_dvpp=args.useDvpp, model_type=args.model_type, rounds=args.round,
        provider=args.provider, threads=args.threads, warmup=args.warmup, loaders=args.loaders,
        prefetch=args.prefetch, result_dir=args.result_dir, resume=args.resume)
    backend = open_backend(options)
    warn_fallback(backend)
    if options.rounds and not options.input_text_path:
        rate, latencies, path, _ = run_pure_inference(options, backend)
        print(pure_summary_lines(rate, latencies, path, options.batch_size, backend.description), end="")
        return 0
    with tqdm(unit="img", disable=not args.progress or None, file=sys.stderr) as bar, interruption("-resume=true"):
        result = run_dataset(options, backend, progress=bar.update)
    print(summary_lines(result, options.batch_size), end="")
    print(f"[INFO] dumps in {result.dump_dir}, perf in {result.perf_file}")
    return _report_failures(result, options.input_text_path)


def run_ais_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """ais_bench's run: outputs in OUTPUT/<date-time or output_dirname>/, the summary beside them."""
    for name, least in (("loop", 1), ("warmup_count", 0), ("batchsize", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name}={value}: must be at least {least}")
    if args.output_dirname and not args.output:
        raise ValueError("--output_dirname names a folder under --output; give --output too")
    if args.output_dirname and (os.sep in args.output_dirname or args.output_dirname in (".", "..")):
        raise ValueError(f"--output_dirname={args.output_dirname}: a folder name, not a path")
    if args.resume and not (args.output and args.output_dirname and args.input):
        raise ValueError("--resume continues the run in OUTPUT/<output_dirname>/: give --input, --output and "
                         "--output_dirname (without --output_dirname every run writes a new dated folder)")
    prefix = None
    if args.output:
        prefix = os.path.join(args.output, args.output_dirname or time.strftime("%Y_%m_%d-%H_%M_%S"))
    options = RunnerOptions(
        om_path=args.model, device_id=args.device, provider=args.provider, threads=args.threads,
        warmup=args.warmup_count, loaders=args.loaders, prefetch=args.prefetch, loop=args.loop,
        dump_dir=prefix, dump_suffix="_0", dump_format=OUTFMT[args.outfmt], save_outputs=prefix is not None,
        write_perf=False, input_label="--input", resume=args.resume)
    backend = open_backend(options)
    warn_fallback(backend)
    shape = backend.input_shape  # ais_bench takes the sizes from the model
    batch = args.batchsize or (shape[0] if shape and shape[0] else 1)
    if len(shape) == 4 and shape[2] and shape[3]:
        options = dataclasses.replace(options, input_height=shape[2], input_width=shape[3])
    options = dataclasses.replace(options, batch_size=batch)
    if prefix:
        print(f"[INFO] output path:{prefix}")
    if not args.input:
        options = dataclasses.replace(options, rounds=args.loop)
        _, latencies, _, _ = run_pure_inference(options, backend, log=lambda line: None)
        return _write_ais_summary(latencies, options.batch_size, [], prefix, argv)
    entries = entries_from_inputs(args.input)
    with tqdm(unit="img", disable=not args.progress or None, file=sys.stderr) as bar, interruption("--resume=true"):
        result = run_dataset(options, backend, progress=bar.update, entries=entries)
    _write_ais_summary(result.batch_latencies_ms, options.batch_size, result.written, prefix, argv)
    print(f"[INFO] {result.images} images, {result.backend}\n{resume_line(result)}", end="")
    return _report_failures(result, "--input")


def warn_fallback(backend) -> None:
    """``-provider=auto`` could not start the GPU provider: one line saying what runs instead and why."""
    if backend.warning:
        print(f"[WARN] {backend.warning}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def interruption(resume_flag: str):
    """Ctrl-C during a dataset run: one line saying what was written and how to continue, exit status 130."""
    try:
        yield
    except RunInterrupted as stop:
        where = f" in {stop.dump_dir}, each complete" if stop.dump_dir else ""
        print(f"benchmark.py: interrupted after {stop.written} dump(s){where}; rerun the same command with "
              f"{resume_flag} to process only the rest", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def _write_ais_summary(latencies_ms: Sequence[float], batch: int, written: Sequence[tuple[str, str]],
                       prefix: str | None, argv: Sequence[str]) -> int:
    summary = ais_summary_dict(latencies_ms, batch, [([i], [o]) for i, o in written], ["benchmark.py", *argv])
    print(ais_summary_lines(summary, batch), end="")
    if prefix:
        write_ais_summary(prefix + "_summary.json", summary)
        print(f"[INFO] summary in {prefix}_summary.json")
    return 0


def _report_failures(result, source: str | None) -> int:
    if result.stale_dumps:
        print(f"[WARN] {result.dump_dir} also holds {result.stale_dumps} dumps from earlier runs (not in "
              f"{source}); the metric will count them", file=sys.stderr)
    for where, reason in result.failed:
        print(f"[ERROR] {where}: {reason}", file=sys.stderr)
    if result.failed:
        print(f"[ERROR] {len(result.failed)} image(s) failed; {result.images} processed", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------- console
def summary_lines(result: RunResult, batch: int) -> str:
    """The console summary: upstream's block plus throughput and latency percentiles."""
    stats = result.stats
    p50, p90, p99 = _percentiles(result.batch_latencies_ms)
    return ("-----------------Performance Summary------------------\n"
            + perf_lines(stats, console=True)
            + "-----------------------------------------------------------\n"
            + f"[INFO] {result.images} images, {result.backend}\n"
            + resume_line(result)
            + f"[INFO] throughput: {stats.e2e_rate:.2f} images/s end to end, {stats.interface_rate:.2f} images/s "
              f"in the model calls\n"
            + f"[INFO] latency per batch of {batch} (ms): p50 {p50:.2f}, p90 {p90:.2f}, p99 {p99:.2f}\n")


def resume_line(result: RunResult) -> str:
    """The console line of a resumed run (empty when it skipped nothing)."""
    if not result.skipped:
        return ""
    return (f"[INFO] resumed: {result.skipped} images skipped (their dumps were complete), {result.images} "
            f"processed\n")


def pure_summary_lines(rate: float, latencies: Sequence[float], path: str | PathLike, batch: int,
                       description: str) -> str:
    p50, p90, p99 = _percentiles(latencies)
    return (f"[INFO] PureInfer result saved in {path}\n"
            "-----------------PureInfer Performance Summary------------------\n"
            f"[INFO] {pure_infer_summary(rate).replace(' = ', ': ').strip()}\n"
            "----------------------------------------------------------------\n"
            f"[INFO] {description}\n"
            f"[INFO] latency per batch of {batch} (ms): p50 {p50:.2f}, p90 {p90:.2f}, p99 {p99:.2f}\n")


def _percentiles(values_ms: Sequence[float]) -> tuple[float, float, float]:
    if not values_ms:
        return 0.0, 0.0, 0.0
    p50, p90, p99 = np.percentile(np.asarray(values_ms), [50, 90, 99])
    return float(p50), float(p90), float(p99)


if __name__ == "__main__":
    sys.exit(run_main(main, "benchmark.py"))
