"""Offline runner throughput per batch size, against a default ONNX Runtime session and torch eager fp32.

For each batch size: the model is built as a user would (``se_resnext50_32x4d_atc.sh --batch_size=N``), then
  runner e2e        benchmark.py on the .info of preprocessed images, dump files included (its [e2e] line)
  runner inference  the same run's model calls alone (its "Interface throughputRate")
  ORT default       a plain onnxruntime.InferenceSession with default options on the exported model, fed
                    the same preprocessed images in the same batches (one pass over all of them)
  torch eager fp32  the PyTorch model, no_grad, same batch
The runner and the plain session are timed alike, a whole pass over the same images, and alternately (runner,
session, runner, session, ...) so that a slower or faster spell of a shared machine hits both; each figure is
the median over ``--repeats`` passes.
``--int8`` adds the runner on the int8 build (``--precision=int8``, calibrated on the same .bin files).
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine_info, markdown_table, measure, write_report


def sh(command: list) -> str:
    out = subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, command))}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout


def runner_rates(model: Path, batch: int, info: Path, size: int, result: Path) -> tuple[float, float]:
    sh([sys.executable, "benchmark.py", "-model_type=vision", f"-om_path={model}", "-device_id=0",
              f"-batch_size={batch}", f"-input_text_path={info}", f"-input_width={size}", f"-input_height={size}",
              "-output_binary=false", "-useDvpp=false", f"-result_dir={result}", "-progress=false"])
    perf = (result / f"perf_vision_batchsize_{batch}_device_0.txt").read_text()
    e2e = float(re.search(r"\[e2e\] throughputRate: ([0-9.]+)", perf).group(1))
    interface = float(re.search(r"Interface throughputRate: ([0-9.]+)", perf).group(1))
    return e2e, interface


def top1_per_image(result: Path) -> dict[str, int]:
    """Top-1 class of every image from a runner result folder's text dump files."""
    import numpy as np
    return {f.name: int(np.argmax(np.loadtxt(f, ndmin=1)))
            for f in sorted((result / "dumpOutput_device0").glob("*.txt"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="flat JPEG folder, e.g. <sample>/val_flat")
    parser.add_argument("--checkpoint", default=None, help="model (default: a seeded 1000-class model)")
    parser.add_argument("--size", type=int, default=224,
                        help="input size (other than 224 needs an --aipp-config of that size: the build makes both models)")
    parser.add_argument("--aipp-config", default=str(ROOT / "aipp_se_resnext50_32x4d_pth.config"))
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--int8", action="store_true", help="also the int8 build")
    parser.add_argument("--compare-regroup", action="store_true",
                        help="also the runner on a build with the grouped-convolution rewrite (--regroup=true)")
    parser.add_argument("--json", default="benchmarks/results/runner.json")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch
    from seresnext.export import load_model
    from seresnext.model import se_resnext50_32x4d

    work = Path(tempfile.mkdtemp(prefix="bench_runner_"))
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
    # the same preprocessed images for the plain session, in the .info's order
    pixels = np.stack([np.fromfile(line.split()[1], dtype=np.float32).reshape(3, args.size, args.size)
                       for line in lines])
    model, _ = load_model(checkpoint)
    model.eval()
    # On a CUDA machine every candidate runs on the GPU: the runner picks ONNX Runtime's CUDA provider itself
    # (-provider=auto), the plain session gets it explicitly, torch eager runs on cuda.
    on_gpu = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_gpu else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(onnx_model), providers=providers)
    device = torch.device("cuda" if on_gpu else "cpu")
    model.to(device)
    results: dict = {"settings": vars(args)}
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        def atc(output_dir: Path, *extra: str) -> None:
            """Build the runner's model for this batch as a user would."""
            sh(["bash", "se_resnext50_32x4d_atc.sh", f"--model={onnx_model}", f"--batch_size={batch}",
                f"--image_size={args.size}", f"--output_dir={output_dir}", f"--aipp_config={args.aipp_config}", *extra])

        atc(work)
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
        session.run(None, {"image": feed})  # warm-up, as the runner's own
        passes = []
        for _ in range(args.repeats):
            e2e, interface = runner_rates(work / f"seresnext50_32x4d_{batch}.onnx", batch, info, args.size,
                                          work / f"result_{batch}")
            passes.append({"runner e2e": e2e, "runner inference": interface, "ORT default": ort_pass()})
            if args.compare_regroup:
                passes[-1]["runner e2e, --regroup=true"], _ = runner_rates(
                    work / "regrouped" / f"seresnext50_32x4d_{batch}.onnx", batch, info, args.size,
                    work / f"result_regrouped_{batch}")

        def torch_eager() -> int:
            with torch.no_grad():
                model(tensor)
            if on_gpu:
                torch.cuda.synchronize()
            return batch
        figures = {key: statistics.median(p[key] for p in passes) for key in passes[0]}
        figures["torch eager fp32"] = measure(torch_eager, repeats=args.repeats)["median"]
        if args.int8:
            atc(work, "--precision=int8", f"--calib_dir={work / 'prep_bin'}")
            figures["runner int8 e2e"], _ = runner_rates(work / f"seresnext50_32x4d_int8_{batch}.onnx", batch, info,
                                                         args.size, work / f"result_int8_{batch}")
            fp32_top1 = top1_per_image(work / f"result_{batch}")
            int8_top1 = top1_per_image(work / f"result_int8_{batch}")
            if not fp32_top1 or fp32_top1.keys() != int8_top1.keys():
                raise SystemExit(f"batch {batch}: the fp32 and int8 runs dumped different image sets")
            same = sum(fp32_top1[k] == int8_top1[k] for k in fp32_top1)
            figures["int8 top-1 agreement %"] = 100.0 * same / len(fp32_top1)
        results[f"batch {batch}"] = {**figures, "passes": passes}
        ratios = {"e2e x ORT": figures["runner e2e"] / figures["ORT default"],
                  "e2e x torch": figures["runner e2e"] / figures["torch eager fp32"],
                  "e2e / inference": figures["runner e2e"] / figures["runner inference"]}
        if args.compare_regroup:
            ratios["regroup x default"] = figures["runner e2e, --regroup=true"] / figures["runner e2e"]
        if args.int8:
            ratios["int8 x fp32 e2e"] = figures["runner int8 e2e"] / figures["runner e2e"]
        rows.append([batch, *figures.values(), *ratios.values()])
        headers = ["batch", *figures, *ratios]
    table = markdown_table(headers, rows) + (f"\n\n(images/s, {args.size}x{args.size}, fp32 unless named, "
                                             f"{'CUDA' if on_gpu else 'CPU'})")
    write_report(args.json, "Offline runner", machine_info(), results, table)


if __name__ == "__main__":
    main()
