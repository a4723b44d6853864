"""The model's 1x1 convolutions as oneDNN convolutions or as matmuls (``PointwiseConv2d``), side by side.

On a CPU, ``PointwiseConv2d`` runs a 1x1 convolution on a small channels-last feature map (at most
``max_matmul_pixels`` pixels) as one matrix multiply. This measures what that buys: the training step
(main.py's CPU settings: --amp, which is bfloat16 autocast on a CPU with native bfloat16 and float32 on
one without; channels_last, fused AdamW) and eval-mode inference, with the
matmul path on and off on the same model, alternating, for each image size. Both settings compute the same
function (tests check it).

    python benchmarks/bench_pointwise.py --sizes 64,224 --batch 32
"""
from __future__ import annotations

import argparse
import statistics

from common import amp_dtype, dtype_name, layer_paths, machine_info, markdown_table, measure, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,224", help="comma-separated image sizes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per repeat")
    parser.add_argument("--repeats", type=int, default=4, help="alternating on/off repeats (median reported)")
    parser.add_argument("--fp32", action="store_true", help="float32 even where bfloat16 is native")
    parser.add_argument("--json", default="benchmarks/results/pointwise.json")
    args = parser.parse_args()

    import torch

    from seresnext.model import PointwiseConv2d, se_resnext50_32x4d

    torch.manual_seed(0)
    model = se_resnext50_32x4d(num_classes=1000).to(memory_format=torch.channels_last)
    pointwise = [m for m in model.modules() if isinstance(m, PointwiseConv2d)]
    default_pixels = PointwiseConv2d.max_matmul_pixels
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    criterion = torch.nn.CrossEntropyLoss()

    def set_matmul(on: bool) -> None:
        for module in pointwise:
            module.max_matmul_pixels = default_pixels if on else 0

    amp = None if args.fp32 else amp_dtype("cpu")

    def autocast():
        return torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None)

    rows, results = [], {}
    for size in (int(s) for s in args.sizes.split(",")):
        images = torch.randn(args.batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, 1000, (args.batch,))
        model.eval()
        matmul_layers = sum(isinstance(m, PointwiseConv2d) and as_matmul
                            for m, as_matmul, _ in layer_paths(model, images[:1]))

        def train_step() -> None:
            with autocast():
                loss = criterion(model(images), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def infer() -> None:
            with torch.inference_mode(), autocast():
                model(images)

        def run(fn, steps: int) -> int:
            for _ in range(steps):
                fn()
            return args.batch * steps

        for task, fn, steps in (("training step", train_step, args.steps), ("inference", infer, args.steps * 3)):
            model.train(task == "training step")
            rates = {True: [], False: []}
            for _ in range(args.repeats):
                for on in (False, True):
                    set_matmul(on)  # then one warm-up call and one timed one
                    rates[on].append(measure(lambda: run(fn, steps), repeats=1, warmup=1)["median"])
            off, on = statistics.median(rates[False]), statistics.median(rates[True])
            results[f"{task} {size}"] = {"size": size, "task": task, "conv img/s": rates[False],
                                         "matmul img/s": rates[True], "matmul_layers": matmul_layers}
            rows.append([f"{task}, {size}x{size}", matmul_layers, off, on, on / off])
    set_matmul(True)
    precision = "fp32" if amp is None else f"{dtype_name(amp)} autocast"
    table = (markdown_table([f"what (batch {args.batch})", f"1x1 convs taking the matmul (of {len(pointwise)})",
                             "convolution img/s", "matmul img/s", "matmul / convolution"], rows)
             + f"\n\n({precision}, channels_last, eager, CPU, {torch.get_num_threads()} threads; median of "
             f"{args.repeats} alternating repeats of {args.steps} training steps or {args.steps * 3} inference "
             f"batches; the matmul path takes maps of at most {default_pixels} pixels)")
    write_report(args.json, "1x1 convolutions: oneDNN convolution vs matmul", machine_info(),
                 {"settings": vars(args), "results": results}, table)


if __name__ == "__main__":
    main()
