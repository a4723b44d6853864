"""The Python-level steps of scripts/device_check.sh: each checks one device path and exits 0 (PASS) or 1 (FAIL)
with a last line that says what it found.

    python scripts/device_check_steps.py env [--dry-run]
    python scripts/device_check_steps.py amp --device cuda
    python scripts/device_check_steps.py ddp --device cuda --work DIR
    python scripts/device_check_steps.py pinned --data DIR
    python scripts/device_check_steps.py negative --device cuda [--simulate]
    python scripts/device_check_steps.py demo --checkpoint FILE --image FILE

Run from the repository root (device_check.sh does). Sizes are tiny: a step takes seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class CheckFailed(Exception):
    """A step found the path broken; the message says how."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


REQUIREMENTS = ("numpy", "PIL", "onnx", "onnxruntime", "tqdm", "matplotlib")
"""What the steps import besides torch and torchvision (requirements.txt's modules)."""
MISSING_STATUS = 4
"""``env``'s exit status when torch and torchvision import but another requirement is missing."""


def step_env(args: argparse.Namespace) -> str:
    """What this machine has: Python, torch, CUDA, cuDNN, the GPUs, ONNX Runtime's providers, torch_npu."""
    import importlib.util

    try:
        import torch
        import torchvision
    except Exception as exc:  # ImportError, or OSError from a broken CUDA install
        raise CheckFailed(f"{sys.executable}: torch and torchvision must import "
                          f"({exc.__class__.__name__}: {exc})") from exc
    missing = [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        print(f"env: missing {', '.join(missing)}")
        raise SystemExit(MISSING_STATUS)

    print(f"python {sys.version.split()[0]} ({sys.executable})")
    print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}), torchvision {torchvision.__version__}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        print(f"cuda:{index} {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
              f"{props.major}.{props.minor}")
    if count:
        print(f"cuDNN {torch.backends.cudnn.version()}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
    try:
        import onnxruntime as ort
        print(f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}")
    except ImportError:
        print("onnxruntime: not installed")
    print(f"torch_npu: {'installed' if __import__('importlib').util.find_spec('torch_npu') else 'not installed'}")
    if not args.dry_run:
        check(count > 0, "torch sees no CUDA device (torch.cuda.is_available() is False)")
    return f"{count} cuda device(s), torch {torch.__version__}"


def _tiny_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def _overflow_epoch(device_type: str, loss_scale: float | None, overflow_at: int = 2, steps: int = 6):
    """One epoch of train_one_epoch in float16 with an inf gradient injected at one step (finite loss)."""
    import torch
    from torch import nn

    from seresnext.devices import Precision, make_device
    from seresnext.distributed import DistContext
    from seresnext.engine import EpochPlan, Printer, Runtime, TrainConfig, TrainParts, train_one_epoch

    device = make_device(device_type, 0)
    model = _tiny_model().to(device)
    calls = {"n": 0}

    def inject(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == overflow_at else grad

    model[-1].weight.register_hook(inject)
    gen = torch.Generator().manual_seed(1)
    loader = [(torch.randn(4, 3, 16, 16, generator=gen), torch.randint(0, 4, (4,), generator=gen), [])
              for _ in range(steps)]
    precision = Precision(device_type, torch.float16, loss_scale)
    scaler = precision.make_scaler()
    initial = scaler.get_scale()
    with contextlib.redirect_stdout(io.StringIO()):
        parts = TrainParts(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01), scaler,
                           lambda e, s: 0.01)
        result = train_one_epoch(parts, loader, EpochPlan(0, split_size=100),
                                 Runtime(device, precision, DistContext(), Printer(DistContext())),
                                 TrainConfig(print_freq=100))
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return result, initial, scaler.get_scale(), finite


def step_amp(args: argparse.Namespace) -> str:
    """float16 with a static loss scale: an injected overflow skips that step and the scale stays; with a dynamic
    one the overflow halves the scale."""
    result, initial, final, finite = _overflow_epoch(args.device, 1024.0)
    check(result.skipped_steps == 1, f"static scale: {result.skipped_steps} step(s) skipped, expected the 1 overflow")
    check(initial == final == 1024.0, f"static scale moved: {initial} -> {final}")
    check(finite and result.steps == 6, "static scale: weights not finite or steps lost")
    result, initial, final, finite = _overflow_epoch(args.device, None)
    check(result.skipped_steps == 1, f"dynamic scale: {result.skipped_steps} step(s) skipped, expected 1")
    check(final < initial, f"dynamic scale did not back off after the overflow: {initial} -> {final}")
    check(finite, "dynamic scale: weights not finite")
    return f"float16 on {args.device}: static 1024 kept with 1 step skipped; dynamic {initial:g} -> {final:g}"


def step_ddp(args: argparse.Namespace) -> str:
    """A world-size-1 process group (nccl on cuda, gloo on cpu) bound to the device, DDP through wrap_ddp, one
    step, an all-reduce and the BatchNorm averaging."""
    import torch
    import torch.distributed as dist

    from seresnext.devices import dist_backend_for, make_device
    from seresnext.distributed import DistContext, _bound_to, all_reduce_sum, average_buffers, wrap_ddp

    backend = dist_backend_for(args.device)
    device = make_device(args.device, 0)
    store = Path(args.work) / "ddp_store"
    store.unlink(missing_ok=True)
    dist.init_process_group(backend, init_method=f"file://{store}", world_size=1, rank=0,
                            **_bound_to(device, backend))
    try:
        ctx = DistContext(rank=0, world_size=1, device_index=0, backend=backend)
        model = _tiny_model().to(device)
        ddp = wrap_ddp(model, ctx, device)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        before = model[-1].weight.detach().clone()
        loss = torch.nn.functional.cross_entropy(ddp(torch.randn(4, 3, 16, 16, device=device)),
                                                 torch.randint(0, 4, (4,), device=device))
        loss.backward()
        optimizer.step()
        check(not torch.equal(before, model[-1].weight.detach()), "the DDP step did not change the weights")
        total = all_reduce_sum(torch.ones(3, device=device), ctx)
        check(total.tolist() == [1.0, 1.0, 1.0], f"all_reduce over 1 rank gave {total.tolist()}")
        average_buffers(model, ctx)
    finally:
        dist.destroy_process_group()
    return f"{backend} group of 1 on {device}, DDP step and all-reduce"


def step_pinned(args: argparse.Namespace) -> str:
    """The train loader pins its batches on cuda, and a non_blocking copy gives the same tensor on the device."""
    import torch

    from seresnext import data
    from seresnext.devices import make_device, pins_memory, synchronize

    device = make_device("cuda", 0)
    dataset = data.RobustImageFolder(Path(args.data) / "train", data.train_transform(64), substitute=True, seed=0)
    loader = data.make_loader(dataset, data.TrainSampler(dataset, 1, 0, seed=0), 4, 2, train=True,
                              pin_memory=pins_memory("cuda"))
    images, target, _ = next(iter(loader))
    check(images.is_pinned() and target.is_pinned(), "the train loader's batch is not in pinned memory")
    copied = images.to(device, non_blocking=True)
    synchronize(device)
    check(torch.equal(copied.cpu(), images), "the non_blocking copy differs from the batch")
    return f"pinned batch {list(images.shape)} copied to {device}"


def step_negative(args: argparse.Namespace) -> str:
    """Device lists beyond the devices present: one line, exit status 2, nothing started (the real main.py on
    the GPU machine; in process with one simulated cuda device on a CPU)."""
    if args.simulate:
        import main
        from seresnext import devices

        devices.cuda_available = lambda: True
        main.device_count = lambda device_type: 1
        main.spawn_workers = main.run_worker = lambda *a, **k: (_ for _ in ()).throw(CheckFailed("started a worker"))
        count = 1

        def run(flags: list[str]) -> tuple[int, str]:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = main.run(["--device", args.device, "--synthetic", "--output-dir", args.work, *flags])
            return status, err.getvalue()
    else:
        import torch

        count = torch.cuda.device_count()

        def run(flags: list[str]) -> tuple[int, str]:
            done = subprocess.run([sys.executable, "main.py", "--device", args.device, "--synthetic", "--output-dir",
                                   args.work, *flags], capture_output=True, text=True, timeout=120, cwd=ROOT)
            return done.returncode, done.stderr
    ids = ",".join(map(str, range(count + 1)))
    cases = [(["--multiprocessing-distributed", "--device-list", ids],
              f"--device-list={ids} names {count + 1} devices"),
             (["--gpu", str(count)], f"--gpu={count}: this machine has {count} {args.device} device")]
    for flags, expected in cases:
        status, err = run(flags)
        lines = err.strip().splitlines()
        check(status == 2 and len(lines) == 1 and lines[0].startswith(f"main.py: error: {expected}"),
              f"main.py {' '.join(flags)}: exit {status}, stderr {err.strip()[-300:]!r}")
        print(lines[0])
    return f"{len(cases)} device lists refused with one line each ({count} device(s) present)"


_TOP1 = re.compile(r"^\s+1\.\s+[\d.]+%\s+(?P<name>.*) \((?P<index>\d+)\)$")


def step_demo(args: argparse.Namespace) -> str:
    """demo.py on cuda and on cpu give the same top-1 class."""
    tops = {}
    for device in ("cuda", "cpu"):
        done = subprocess.run([sys.executable, "demo.py", args.image, "--checkpoint", args.checkpoint, "--device",
                               device], capture_output=True, text=True, timeout=120, cwd=ROOT)
        check(done.returncode == 0, f"demo.py --device {device}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
        print(done.stdout.strip())
        found = [m.group("index") for m in map(_TOP1.match, done.stdout.splitlines()) if m]
        check(bool(found), f"demo.py --device {device} printed no top-1 line")
        tops[device] = found[0]
    check(tops["cuda"] == tops["cpu"], f"top-1 differs: cuda {tops['cuda']}, cpu {tops['cpu']}")
    return f"top-1 class {tops['cuda']} on cuda and cpu"


STEPS = {"env": step_env, "amp": step_amp, "ddp": step_ddp, "pinned": step_pinned, "negative": step_negative,
         "demo": step_demo}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="device_check_steps.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", default=".")
    parser.add_argument("--data", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--image", default=None)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--simulate", action="store_true", help="negative: one simulated cuda device, in process")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    try:
        print(f"{args.step}: {STEPS[args.step](args)}")
    except CheckFailed as exc:
        print(f"{args.step}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
