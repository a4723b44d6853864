"""Offline runner throughput per batch size and backend, against OpenVINO's benchmark_app, a default ONNX Runtime
session and torch eager fp32.

For each batch size the model is built as a user would (``se_resnext50_32x4d_atc.sh --batch_size=N``). Then, for
each backend of the runner (``-provider=cpu``: ONNX Runtime; ``-provider=openvino`` when openvino is installed):
  runner e2e          benchmark.py on the .info of preprocessed images, dump files included (its [e2e] line)
  runner inference    the same run's model calls alone (its "Interface throughputRate")
  runner pure         benchmark.py -round=N: the model alone on one batch of random data, N times
and beside them:
  benchmark_app       OpenVINO's own benchmark tool on the same built model (-hint throughput,
                      -infer_precision f32, -t seconds), the reference for the best CPU runtime
  ORT default         a plain onnxruntime.InferenceSession with default options on the exported model, fed
                      the same preprocessed images in the same batches (one pass over all of them)
  torch eager fp32    the PyTorch model, no_grad, same batch
The candidates run alternately, once each per repeat, so that a slower or faster spell of a shared machine hits
all of them; each figure is the median over ``--repeats``.
``--int8`` adds the runner on the int8 build (``--precision=int8``), calibrated on ``--calib-images`` images that
the top-1 agreement with fp32 then leaves out. It runs on ONNX Runtime only: the build is ONNX Runtime's QOperator
format, whose contrib operators OpenVINO cannot convert.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine_info, markdown_table, measure, work_dir, write_report

from seresnext.output_formats import (perf_file_name, pure_infer_perf_file_name, read_dump, read_perf_file,
                                      read_pure_infer_perf_file)
from seresnext.runner import openvino_available


def sh(command: list) -> str:
    out = subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, command))}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout


def runner_rates(model: Path, batch: int, info: Path, size: int, result: Path, provider: str) -> tuple[float, float]:
    """(e2e, inference) images/s of one benchmark.py pass over ``info``."""
    sh([sys.executable, "benchmark.py", "-model_type=vision", f"-om_path={model}", "-device_id=0",
        f"-batch_size={batch}", f"-input_text_path={info}", f"-input_width={size}", f"-input_height={size}",
        "-output_binary=false", "-useDvpp=false", f"-result_dir={result}", "-progress=false", f"-provider={provider}"])
    perf = read_perf_file(result / perf_file_name(batch, 0))
    return perf["e2e"]["throughputRate"], perf["infer"]["Interface throughputRate"]


def runner_pure_rate(model: Path, batch: int, rounds: int, result: Path, provider: str) -> float:
    """images/s of ``benchmark.py -round=rounds`` (the model alone, no input files)."""
    sh([sys.executable, "benchmark.py", f"-round={rounds}", f"-om_path={model}", "-device_id=0",
        f"-batch_size={batch}", f"-result_dir={result}", f"-provider={provider}"])
    return read_pure_infer_perf_file(result / pure_infer_perf_file_name(model, 0))


def benchmark_app_rate(model: Path, seconds: int) -> float:
    """images/s that OpenVINO's benchmark_app reports (its Throughput line counts images, batch included)."""
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    out = sh([tool, "-m", model, "-d", "CPU", "-hint", "throughput", "-infer_precision", "f32", "-t", seconds])
    return float(re.search(r"Throughput:\s+([0-9.]+) FPS", out).group(1))


def top1_per_image(result: Path) -> dict[str, int]:
    """Top-1 class of every image from a runner result folder's text dump files."""
    import numpy as np
    return {f.name: int(np.argmax(read_dump(f)))
            for f in sorted((result / "dumpOutput_device0").glob("*.txt"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="flat JPEG folder, e.g. <sample>/val_flat")
    parser.add_argument("--checkpoint", default=None, help="model (default: a seeded 1000-class model)")
    parser.add_argument("--size", type=int, default=224,
                        help="input size (other than 224 needs an --aipp-config of that size: the build makes both "
                             "models)")
    parser.add_argument("--aipp-config", default=str(ROOT / "aipp_se_resnext50_32x4d_pth.config"))
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=16, help="batches of each pure-inference run (-round=N)")
    parser.add_argument("--app-seconds", type=int, default=20, help="benchmark_app's -t per repeat")
    parser.add_argument("--int8", action="store_true", help="also the int8 build")
    parser.add_argument("--calib-images", type=int, default=64,
                        help="images the int8 build is calibrated on (left out of the agreement)")
    parser.add_argument("--compare-regroup", action="store_true",
                        help="also the runner on a build with the grouped-convolution rewrite (--regroup=true)")
    parser.add_argument("--workdir", default=None, help="where models and results go (default: a new temp folder)")
    parser.add_argument("--json", default="benchmarks/results/runner.json")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch
    from seresnext.export import load_model
    from seresnext.model import se_resnext50_32x4d

    work = work_dir(args.workdir, "bench_runner")
    checkpoint = args.checkpoint
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = work / "seeded.pth"
        torch.save(se_resnext50_32x4d().eval().state_dict(), checkpoint)
    onnx_model = work / "se_resnext50_32x4d.onnx"
    sh([sys.executable, "seresnext50_pth2onnx.py", checkpoint, onnx_model, "--image-size", args.size])
    resize = round(args.size * 256 / 224)
    sh([sys.executable, "preprocess_se_resnext50_32x4d_pth.py", args.images, work / "prep_bin", "--resize", resize,
        "--crop", args.size, "--no-progress"])
    info = work / "val.info"
    sh([sys.executable, "get_info.py", "bin", work / "prep_bin", info, args.size, args.size])
    # Keep a multiple of the largest batch: a last partial batch is padded and computed in full, which would
    # charge the runner for images the other candidates (always full batches) never compute.
    lines = info.read_text().splitlines()
    largest = max(int(b) for b in args.batches.split(","))
    if len(lines) < largest:
        raise SystemExit(f"--images: {len(lines)} images, fewer than the largest batch {largest}")
    lines = lines[:len(lines) - len(lines) % largest]
    info.write_text("\n".join(lines) + "\n")
    calibration = set()
    if args.int8:  # calibrate on the last images, measure agreement on the others
        calib_dir = work / "calib_bin"
        calib_dir.mkdir(exist_ok=True)
        for line in lines[-args.calib_images:]:
            source = Path(line.split()[1])
            shutil.copy(source, calib_dir / source.name)
            calibration.add(source.name.rsplit(".", 1)[0])
    # the same preprocessed images for the plain session, in the .info's order
    pixels = np.stack([np.fromfile(line.split()[1], dtype=np.float32).reshape(3, args.size, args.size)
                       for line in lines])
    model, _ = load_model(checkpoint)
    model.eval()
    # On a CUDA machine every candidate runs on the GPU: the runner picks ONNX Runtime's CUDA provider itself
    # (-provider=auto), the plain session gets it explicitly, torch eager runs on cuda.
    on_gpu = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_gpu else ["CPUExecutionProvider"]
    backends = ["auto"] if on_gpu else ["cpu"] + (["openvino"] if openvino_available() else [])
    label = {"auto": "runner (CUDA)", "cpu": "runner (ORT)", "openvino": "runner (OpenVINO)"}
    session = ort.InferenceSession(str(onnx_model), providers=providers)
    device = torch.device("cuda" if on_gpu else "cpu")
    model.to(device)
    results: dict = {"settings": vars(args)}
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        def atc(output_dir: Path, *extra: str) -> None:
            """Build the runner's model for this batch as a user would."""
            sh(["bash", "se_resnext50_32x4d_atc.sh", f"--model={onnx_model}", f"--batch_size={batch}",
                f"--image_size={args.size}", f"--output_dir={output_dir}", f"--aipp_config={args.aipp_config}",
                *extra])

        atc(work)
        built = work / f"seresnext50_32x4d_{batch}.onnx"
        feed = pixels[:batch]
        tensor = torch.from_numpy(feed).to(device)

        def ort_pass() -> float:
            """images/s of the plain session over every image, in the runner's batches."""
            started = time.perf_counter()
            for first in range(0, len(pixels), batch):
                session.run(None, {"image": pixels[first:first + batch]})
            return len(pixels) / (time.perf_counter() - started)

        if args.compare_regroup:
            atc(work / "regrouped", "--regroup=true")
        if args.int8:
            atc(work, "--precision=int8", f"--calib_dir={work / 'calib_bin'}")
        session.run(None, {"image": feed})  # warm-up, as the runner's own
        passes = []
        for _ in range(args.repeats):
            figures: dict[str, float] = {}
            for backend in backends:
                name = label[backend]
                figures[f"{name} e2e"], figures[f"{name} inference"] = runner_rates(
                    built, batch, info, args.size, work / f"result_{backend}_{batch}", backend)
                figures[f"{name} pure"] = runner_pure_rate(built, batch, args.rounds, work / f"pure_{backend}",
                                                           backend)
                if args.int8 and backend != "openvino":
                    figures[f"{name} int8 e2e"], _ = runner_rates(
                        work / f"seresnext50_32x4d_int8_{batch}.onnx", batch, info, args.size,
                        work / f"result_int8_{backend}_{batch}", backend)
            if "openvino" in backends:
                figures["benchmark_app (OpenVINO, f32)"] = benchmark_app_rate(built, args.app_seconds)
            figures["ORT default"] = ort_pass()
            if args.compare_regroup:
                figures["runner (ORT) e2e, --regroup=true"], _ = runner_rates(
                    work / "regrouped" / f"seresnext50_32x4d_{batch}.onnx", batch, info, args.size,
                    work / f"result_regrouped_{batch}", "cpu")
            passes.append(figures)

        def torch_eager() -> int:
            with torch.no_grad():
                model(tensor)
            if on_gpu:
                torch.cuda.synchronize()
            return batch
        figures = {key: statistics.median(p[key] for p in passes) for key in passes[0]}
        figures["torch eager fp32"] = measure(torch_eager, repeats=args.repeats)["median"]
        if args.int8:
            for backend in [b for b in backends if b != "openvino"]:
                fp32 = top1_per_image(work / f"result_{backend}_{batch}")
                int8 = top1_per_image(work / f"result_int8_{backend}_{batch}")
                if not fp32 or fp32.keys() != int8.keys():
                    raise SystemExit(f"batch {batch}: the fp32 and int8 runs dumped different image sets")
                held_out = [k for k in fp32 if k.rsplit("_", 1)[0] not in calibration]
                same = sum(fp32[k] == int8[k] for k in held_out)
                figures[f"{label[backend]} int8 top-1 agreement % ({len(held_out)} images not calibrated on)"] = \
                    100.0 * same / max(len(held_out), 1)
        results[f"batch {batch}"] = {**figures, "passes": passes}
        ratios = {}
        for backend in backends:
            name = label[backend]
            ratios[f"{name} e2e x ORT default"] = figures[f"{name} e2e"] / figures["ORT default"]
            if "openvino" in backends:
                ratios[f"{name} pure x benchmark_app"] = figures[f"{name} pure"] / figures[
                    "benchmark_app (OpenVINO, f32)"]
            if args.int8 and backend != "openvino":
                ratios[f"{name} int8 x fp32 e2e"] = figures[f"{name} int8 e2e"] / figures[f"{name} e2e"]
        if args.compare_regroup:
            ratios["regroup x default (ORT)"] = (figures["runner (ORT) e2e, --regroup=true"]
                                                 / figures["runner (ORT) e2e"])
        rows.extend([[batch, key, value] for key, value in {**figures, **ratios}.items()])
    table = markdown_table(["batch", "candidate or ratio", "images/s (median) or ratio"], rows) + (
        f"\n\n(images/s, {args.size}x{args.size}, fp32 unless named, {'CUDA' if on_gpu else 'CPU'}; "
        f"{args.repeats} alternating repeats)")
    write_report(args.json, "Offline runner", machine_info(), results, table)


if __name__ == "__main__":
    main()
