"""Training-step throughput: main.py's training path against a plain loop and a timm loop.

Candidates, same model, batch and resolution, synthetic data (the model is measured, not the disk):
  main.py      main.py --synthetic with its best settings for the device (run as a subprocess; its own
               "FPS@all" lines, steady-state steps only, one per epoch; median over epochs)
  plain fp32   a pytorch/examples style loop: fp32, NCHW, no AMP, SGD
  timm         the same loop on timm's legacy_seresnext50_32x4d with timm's recommended settings
               (AMP, channels_last; AMP is what main.py's --amp picks here: fp16 on cuda, bf16 on a cpu
               with native bfloat16, fp32 on one without)
Also measures the device's matmul peak (large square matmul, fp32 and the AMP dtype) and reports each
candidate's fraction of it, counting 3x the forward FLOPs per training image.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

from common import ROOT, amp_dtype, dtype_name, machine_info, markdown_table, measure, work_dir, write_report

FORWARD_GFLOP_224 = 8.47  # per 224x224 image (4.23 GMAC)


def matmul_peak_gflops(device, dtype, n: int = 4096, repeats: int = 5) -> float:
    import torch
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run() -> int:
        for _ in range(2):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return 2 * 2 * n ** 3
    return measure(run, repeats=repeats)["median"] / 1e9


def loop_images_per_second(model, device, batch: int, size: int, steps: int, repeats: int, *, amp_dtype=None,
                           channels_last: bool = False) -> dict:
    import torch
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    images = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, 1000, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def run() -> int:
        for _ in range(steps):
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = criterion(model(images), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        loss.item()
        return steps * batch
    return measure(run, repeats=repeats, warmup=1)


def main_py_images_per_second(args, device_type: str) -> dict:
    steps = args.steps * (args.repeats + 1) + 5  # main.py leaves its first 5 steps out of FPS@all
    command = [sys.executable, str(ROOT / "main.py"), "--synthetic", f"--device={device_type}",
               f"-b={args.batch}", f"--image-size={args.size}", "--epochs=1", f"--stop-step-num={steps}",
               "--print-freq=1000000", "--workers=0", "--output-dir", args.workdir, "--overwrite",
               *args.main_args.split()]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"main.py failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    rates = [float(v) for v in re.findall(r"\* FPS@all ([0-9.]+)", out.stdout)]
    if not rates:
        raise SystemExit(f"main.py printed no FPS@all line:\n{out.stdout[-3000:]}")
    return {"median": statistics.median(rates), "repeats": rates, "wall_s": time.perf_counter() - start,
            "command": " ".join(command[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="input resolution")
    parser.add_argument("--steps", type=int, default=3, help="steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--main-args", default=None,
                        help="main.py's settings (default: --amp --channels-last --compile)")
    parser.add_argument("--skip", default="", help="comma list of candidates to skip: main,plain,timm")
    parser.add_argument("--workdir", default=None,
                        help="main.py's --output-dir (default: a new temporary folder)")
    parser.add_argument("--json", default="benchmarks/results/train.json")
    args = parser.parse_args()
    args.workdir = str(work_dir(args.workdir, "bench_train"))

    import torch
    from seresnext.model import se_resnext50_32x4d
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = amp_dtype(device.type)
    if args.main_args is None:
        args.main_args = "--amp --channels-last --compile"
    skip = set(filter(None, args.skip.split(",")))
    gflop_per_image = 3 * FORWARD_GFLOP_224 * (args.size / 224) ** 2
    info = machine_info()
    results = {"settings": vars(args)}
    results["peak_gflops"] = {"fp32": matmul_peak_gflops(device, torch.float32)}
    if amp is not None:
        results["peak_gflops"][dtype_name(amp)] = matmul_peak_gflops(device, amp)
    print("matmul peak GFLOP/s:", results["peak_gflops"], flush=True)
    candidates = {}
    if "plain" not in skip:
        torch.manual_seed(0)
        candidates["plain fp32 loop"] = (loop_images_per_second(
            se_resnext50_32x4d(), device, args.batch, args.size, args.steps, args.repeats), "fp32")
    if "timm" not in skip:
        import timm
        torch.manual_seed(0)
        candidates["timm loop (AMP, channels_last)"] = (loop_images_per_second(
            timm.create_model("legacy_seresnext50_32x4d"), device, args.batch, args.size, args.steps,
            args.repeats, amp_dtype=amp, channels_last=True), dtype_name(amp))
    if "main" not in skip:
        candidates[f"main.py {args.main_args}"] = (main_py_images_per_second(args, device.type),
                                                   dtype_name(amp) if "--amp" in args.main_args else "fp32")
    baseline = candidates.get("plain fp32 loop", (None,))[0]
    rows = []
    for name, (figures, precision) in candidates.items():
        rate = figures["median"]
        peak = results["peak_gflops"][precision]
        rows.append([name, rate, (rate / baseline["median"]) if baseline else "-",
                     f"{100 * rate * gflop_per_image / peak:.0f}% of {precision} ({peak:.0f} GFLOP/s)"])
        results[name] = figures
    table = markdown_table([f"training step, batch {args.batch}, {args.size}x{args.size}, {device.type}",
                            "images/s (median)", "x plain fp32", "matmul peak reached"], rows)
    write_report(args.json, "Training step", info, results, table)


if __name__ == "__main__":
    main()
