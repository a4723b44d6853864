"""Where a training step's time goes: PyTorch profiler self time per operator group, for main.py's CPU
settings (bfloat16 autocast, channels_last, eager) or plain fp32, on synthetic data.

It explains the gap between the training step and the matmul peak that bench_train.py reports: the groups
are the convolutions (forward, backward), batch norm, the element-wise ops (ReLU, the SE block's sigmoid
and scaling, the residual adds, dtype casts and copies) and the optimizer.

    python benchmarks/profile_train.py --size 224 --batch 32
"""
from __future__ import annotations

import argparse
import collections

from common import amp_dtype, dtype_name, layer_paths, machine_info, markdown_table, write_report

GROUPS = (  # first match wins; matched against the aten op name
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("mkldnn_convolution", "convolution", "_convolution", "conv2d")),
    ("batch norm", ("native_batch_norm", "batch_norm", "_batch_norm_impl_index", "native_batch_norm_backward")),
    ("optimizer", ("_fused_adamw", "_fused_sgd", "adam", "sgd", "_foreach")),
    ("matmul (1x1 convolutions on small maps, classifier)", ("addmm", "mm", "linear", "matmul")),
    ("element-wise and copies", ("relu", "threshold", "sigmoid", "mul", "add", "div", "sub", "copy_", "_to_copy",
                                 "clamp", "fill_", "zero_", "where", "sum", "mean", "max_pool", "avg_pool",
                                 "adaptive_avg_pool", "cat", "stack")),
)


def group_of(name: str) -> str:
    op = name.split("::", 1)[-1]
    for group, keys in GROUPS:
        if any(op == key or op.startswith(key) for key in keys):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--fp32", action="store_true", help="plain fp32 NCHW instead of main.py's settings "
                        "(--amp, channels_last; --amp is bfloat16 on a CPU with native bfloat16, else float32)")
    parser.add_argument("--json", default="benchmarks/results/profile_train.json")
    args = parser.parse_args()

    import torch
    from torch.profiler import profile

    from seresnext.model import se_resnext50_32x4d

    torch.manual_seed(0)
    model = se_resnext50_32x4d(num_classes=1000)
    memory_format = torch.contiguous_format if args.fp32 else torch.channels_last
    model.to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    criterion = torch.nn.CrossEntropyLoss()
    images = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=memory_format)
    target = torch.randint(0, 1000, (args.batch,))

    amp = None if args.fp32 else amp_dtype("cpu")

    def step() -> None:
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss = criterion(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # forward GFLOP per step of the layers that run as convolutions and of those that run as matmuls
    flops = {"convolution": 0.0, "matmul": 0.0}
    for _, as_matmul, gflop in layer_paths(model, images):
        flops["matmul" if as_matmul else "convolution"] += gflop
    for _ in range(2):
        step()
    with profile() as prof:
        for _ in range(args.steps):
            step()
    times: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            times[group_of(event.key)] += event.self_cpu_time_total / 1000.0 / args.steps
            ops[event.key] += event.self_cpu_time_total / 1000.0 / args.steps
    print("largest ops:", ", ".join(f"{k} {v:.0f} ms" for k, v in ops.most_common(12)))
    total = sum(times.values())
    rows = [[group, ms, 100.0 * ms / total] for group, ms in times.most_common()]
    rows.append(["total (aten ops, self time)", total, 100.0])
    # forward FLOPs of the layers that ran as convolutions and of those that ran as matmuls (backward: twice)
    rates = {"convolution forward GFLOP/s": flops["convolution"] / (times["convolution forward"] / 1000.0),
             "convolution backward GFLOP/s": 2 * flops["convolution"] / (times["convolution backward"] / 1000.0),
             "whole step GFLOP/s": 3 * sum(flops.values()) / (total / 1000.0)}
    if flops["matmul"]:
        key = "matmul (1x1 convolutions on small maps, classifier)"
        rates["matmul forward+backward GFLOP/s"] = 3 * flops["matmul"] / (times[key] / 1000.0)
    setting = "fp32, NCHW" if args.fp32 else f"--amp ({dtype_name(amp)}), channels_last"
    table = (markdown_table(["op group", "ms per step", "% of step"], rows)
             + f"\n\n(training step, batch {args.batch}, {args.size}x{args.size}, {setting}, eager, CPU; "
             f"PyTorch profiler self time, mean of {args.steps} steps)\n\n"
             + "; ".join(f"{name}: {value:.0f}" for name, value in rates.items())
             + f" (forward GFLOP per step, counted per layer: {flops['convolution']:.1f} as convolutions, "
             f"{flops['matmul']:.1f} as matmuls; backward twice that)")
    write_report(args.json, "Training step by op group", machine_info(),
                 {"settings": vars(args), "ms_per_step": dict(times), "ms_per_step_by_op": dict(ops),
                  "forward_gflop_per_step": flops, "rates": rates}, table)


if __name__ == "__main__":
    main()
