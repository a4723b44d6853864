"""What a checkpoint costs the training thread, against the training step it interrupts.

``main.py`` hands each checkpoint (epoch ends, and mid-epoch ones with --checkpoint-steps/--checkpoint-minutes)
to ``CheckpointWriter.submit``, which copies the model and optimizer state to CPU memory on the training
thread and then serialises, writes and fsyncs it in a background thread. This measures, side by side on the
same model and optimizer state (SE-ResNeXt50_32x4d, 1000 classes, SGD with momentum as upstream):

1. one training step (forward, backward, optimizer step) at --size / --batch with the sample recipe's
   settings (channels-last, --amp's autocast dtype on this device), for scale;
2. ``submit`` as the training thread sees it (the previous write already finished, as it is when writes are
   minutes apart);
3. the background write that follows (serialise + write + fsync of checkpoint.pth.tar).
"""
from __future__ import annotations

import argparse
import statistics
import time

from common import amp_dtype, dtype_name, machine_info, markdown_table, work_dir, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="training image size (default 64)")
    parser.add_argument("--batch", type=int, default=32, help="training batch (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements of each (default 5)")
    parser.add_argument("--workdir", default=None, help="where the checkpoints go (default: a new temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from seresnext.checkpoint import CheckpointWriter
    from seresnext.model import se_resnext50_32x4d

    folder = work_dir(args.workdir, "bench_checkpoint")
    dtype = amp_dtype("cpu")
    model = se_resnext50_32x4d(num_classes=1000).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    images = torch.randn(args.batch, 3, args.size, args.size).to(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (args.batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = criterion(model(images), target)
        loss.backward()
        optimizer.step()

    def state() -> dict:
        return {"epoch": 0, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}

    step()  # warm-up; the momentum buffers now exist, as in a real checkpoint
    megabytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    megabytes += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                     if torch.is_tensor(t)) / 1e6
    steps, submits, writes = [], [], []
    with CheckpointWriter() as writer:
        for _ in range(args.repeats):  # interleaved, so that a busy moment of the machine hits all three
            started = time.perf_counter()
            step()
            steps.append(time.perf_counter() - started)
            started = time.perf_counter()
            writer.submit(state(), folder, is_best=False)
            submits.append(time.perf_counter() - started)
            started = time.perf_counter()
            writer.wait()
            writes.append(time.perf_counter() - started)

    ms = lambda values: [1000.0 * v for v in values]  # noqa: E731
    results = {"state_mb": megabytes, "step_ms": ms(steps), "submit_ms": ms(submits), "write_ms": ms(writes)}
    median = {key: statistics.median(results[key]) for key in ("step_ms", "submit_ms", "write_ms")}
    table = markdown_table(
        ["what", "median ms", "all (ms)"],
        [[f"training step ({args.size} px, batch {args.batch}, {dtype_name(dtype)}, channels-last)", median["step_ms"],
          ", ".join(f"{v:.0f}" for v in results["step_ms"])],
         [f"submit on the training thread ({megabytes:.0f} MB to CPU memory)", median["submit_ms"],
          ", ".join(f"{v:.0f}" for v in results["submit_ms"])],
         ["background write (serialise, write, fsync)", median["write_ms"],
          ", ".join(f"{v:.0f}" for v in results["write_ms"])]])
    write_report(args.json, "checkpoint submit", machine_info(), {"settings": vars(args), **results}, table)


if __name__ == "__main__":
    main()
