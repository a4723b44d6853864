"""Shared plumbing for the benchmark scripts: machine description, repeated timing, tables, JSON.

Every benchmark runs its candidates side by side in one process (or one run), repeats each measurement,
and reports medians and ratios, so a number is always read against its neighbour on the same machine.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, cores, GPU (if any) and the versions of the libraries that shape the numbers."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    for package in ("torch", "torchvision", "onnxruntime", "onnx", "numpy", "Pillow", "timm"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        from seresnext.devices import probe_cpu_bfloat16
        probe = probe_cpu_bfloat16()
        info["cpu_bfloat16"] = f"{'native' if probe.native else 'not native'} ({probe.measured})"
        if os.environ.get("ONEDNN_MAX_CPU_ISA"):
            info["ONEDNN_MAX_CPU_ISA"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    except ImportError:
        pass
    return info


def amp_dtype(device_type: str):
    """The autocast dtype main.py's ``--amp`` picks here (float16 on cuda; on a cpu bfloat16 where native, else
    None: float32), so a benchmark of "AMP" measures what a user would get."""
    from seresnext.devices import resolve_precision
    return resolve_precision(device_type, True).dtype


def dtype_name(dtype) -> str:
    return "fp32" if dtype is None else str(dtype).replace("torch.", "")


def work_dir(path: str | None, name: str) -> Path:
    """``path`` (created if missing), or else a new private folder from ``tempfile.mkdtemp``: never a fixed
    name in the shared /tmp, where another local user could plant a symlink first."""
    if path:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return Path(tempfile.mkdtemp(prefix=f"{name}_"))


def measure(run: Callable[[], int], repeats: int = 3, warmup: int = 1) -> dict:
    """Call ``run`` (which returns how many items it processed) ``warmup`` + ``repeats`` times.

    Returns the median items/s and every repeat's figure.
    """
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        items = run()
        rates.append(items / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "repeats": rates}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_header(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ", no GPU"
    libs = ", ".join(f"{k} {info[k]}" for k in ("torch", "torchvision", "onnxruntime", "numpy", "Pillow", "timm")
                     if k in info)
    bf16 = f", bfloat16 {info['cpu_bfloat16']}" if "cpu_bfloat16" in info else ""
    cap = f", ONEDNN_MAX_CPU_ISA={info['ONEDNN_MAX_CPU_ISA']}" if "ONEDNN_MAX_CPU_ISA" in info else ""
    return f"Machine: {info['cpu']}, {info['cores']} cores{gpu}{bf16}{cap}; Python {info['python']}; {libs}"


def run_header(run: dict | None) -> str:
    """The report line that says which run a table comes from."""
    if not run:
        return "Run: not recorded in the JSON"
    return f"Run: `{run['command']}`, finished {run['finished']}"


def write_report(path: str | os.PathLike | None, name: str, info: dict, results: dict, table: str) -> None:
    """Print the table with the machine line, and write the raw figures as JSON when ``path`` is given; the
    JSON records the command and when it finished, so a report can say which run each table comes from."""
    run = {"command": " ".join(["python", *sys.argv]),
           "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"\n## {name}\n\n{machine_header(info)}\n{run_header(run)}\n\n{table}\n", flush=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"benchmark": name, "machine": info, "run": run, "results": results,
                                          "table": table}, indent=2))
        print(f"raw figures: {path}")


def layer_paths(model, images) -> list[tuple[object, bool, float]]:
    """For each convolution and linear layer of ``model``, in the order one no-grad forward pass over
    ``images`` calls them: the module, whether it ran as a matmul (a linear layer, or a ``PointwiseConv2d``
    that took its matmul path) and its forward GFLOP."""
    import torch

    from seresnext.model import PointwiseConv2d
    layers = []

    def record(module, inputs, output) -> None:
        if isinstance(module, torch.nn.Linear):
            layers.append((module, True, 2e-9 * output.numel() * module.in_features))
            return
        per_output = 2e-9 * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        as_matmul = isinstance(module, PointwiseConv2d) and module.takes_matmul(inputs[0])
        layers.append((module, as_matmul, per_output * output.numel()))

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return layers
