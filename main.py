#!/usr/bin/env python3
"""Train or evaluate SE-ResNeXt50_32x4d on an ImageFolder dataset (upstream ``main.py``, same flags and logs).

    python main.py --data_path /data/imagenet --amp --opt-level O2                    # 1 device
    python main.py --data_path /data/imagenet --amp --multiprocessing-distributed \\
        --device-list 0,1,2,3,4,5,6,7 --world-size 1 --rank 0 --addr 127.0.0.1 --port 29588   # 8 devices
    torchrun --nproc_per_node 8 main.py --data_path /data/imagenet --amp             # same, with torchrun
    python main.py --resume ./model_best.pth.tar --evaluate --data_path /data/imagenet     # evaluate only

Runs on cpu, cuda and (with torch_npu) npu; see docs/training.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from torch import nn

from seresnext import data, memory
from seresnext.checkpoint import CheckpointError, earlier_run_files, prepare_output_dir, remove_stale_temporaries
from seresnext.devices import (AMP_DTYPES, OPT_LEVELS, Precision, device_count, import_device_backend,
                               normalize_device_type, resolve_precision)
from seresnext.distributed import DEFAULT_DIST_TIMEOUT, agree_on_precision, choose_backend, init_distributed, shutdown
from seresnext.engine import NonFiniteLossError, Runtime, TrainConfig, evaluate
from seresnext.launch import DeviceListError, LaunchPlan, check_device_ids, plan_launch, spawn_workers
from seresnext.peer_watch import PeerLostError, is_peer_failure
from seresnext.errors import first_line
from seresnext.train_loop import train
from seresnext.train_setup import (Learner, build_loaders, build_model, build_optimizer, check_memory, resume,
                                   start_process)

PROG = "main.py"
KNOWN_ERRORS = (data.DataError, CheckpointError, NonFiniteLossError, memory.NotEnoughMemoryError, ValueError,
                OSError)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Upstream's flags (same spelling and defaults; prefixes such as ``--data=`` and ``--epoch=`` still
    work), then the additions. Keep new flags from starting with ``--data`` or ``--epoch``."""
    parser = argparse.ArgumentParser(prog=PROG, add_help=add_help,
                                     description="SE-ResNeXt50_32x4d ImageNet training (Ascend ModelZoo main.py)")
    _add_dataset_and_schedule_flags(parser)
    _add_process_flags(parser)
    _add_precision_flags(parser)
    _add_run_flags(parser)
    _add_data_and_model_additions(parser)
    _add_training_additions(parser)
    return parser


def _add_dataset_and_schedule_flags(parser: argparse.ArgumentParser) -> None:
    """Upstream's dataset and schedule flags."""
    parser.add_argument("--data_path", metavar="DIR", default="/dataset/imagenet",
                        help="dataset root with train/ and val/ in ImageFolder layout (default: /dataset/imagenet)")
    parser.add_argument("-j", "--workers", default=4, type=int, metavar="N",
                        help="data loading workers for the whole node, split across its processes (default: 4)")
    parser.add_argument("--epochs", default=90, type=int, metavar="N", help="number of total epochs to run")
    parser.add_argument("--start-epoch", default=0, type=int, metavar="N",
                        help="manual epoch number to start at (a resumed checkpoint overrides it)")
    parser.add_argument("-b", "--batch-size", default=256, type=int, metavar="N",
                        help="mini-batch size for the whole node, split across its processes (default: 256)")
    parser.add_argument("--lr", "--learning-rate", default=0.1, type=float, metavar="LR", dest="lr",
                        help="initial learning rate (cosine decay per epoch)")
    parser.add_argument("--gamma", default=0.1, type=float, metavar="GAM", help="unused (kept from upstream)")
    parser.add_argument("--momentum", default=0.9, type=float, metavar="M", help="SGD momentum")
    parser.add_argument("--wd", "--weight-decay", default=1e-4, type=float, metavar="W", dest="weight_decay",
                        help="weight decay (default: 1e-4)")


def _add_process_flags(parser: argparse.ArgumentParser) -> None:
    """Upstream's device and process flags (one process per device)."""
    parser.add_argument("--seed", default=None, type=int,
                        help="seed for weight init (data order and augmentation are always seeded, with 0 "
                             "when no seed is given)")
    parser.add_argument("--device", default=None, type=str,
                        help="npu, cuda (or gpu), cpu; default: npu if torch_npu sees one, else cuda, else cpu")
    parser.add_argument("--device-list", default="0,1,2,3,4,5,6,7", type=str,
                        help="device ids, one process each with --multiprocessing-distributed")
    parser.add_argument("--gpu", default=None, type=int, help="device id of a single-process run")
    parser.add_argument("--multiprocessing-distributed", action="store_true",
                        help="spawn one process per --device-list entry on this node")
    parser.add_argument("--world-size", default=-1, type=int,
                        help="number of nodes (with --multiprocessing-distributed) or of processes")
    parser.add_argument("--rank", default=-1, type=int, help="node rank (or process rank without spawning)")
    parser.add_argument("--dist-url", default="", type=str,
                        help="rendezvous URL, e.g. tcp://10.0.0.1:29588 (default: --addr/--port)")
    parser.add_argument("--dist-backend", default=None, type=str,
                        help="hccl, nccl or gloo (default: by device: hccl on npu, nccl on cuda, gloo on cpu)")
    parser.add_argument("--addr", default="", type=str, help="master address (default: 127.0.0.1)")
    parser.add_argument("--port", default="", type=str, help="master port (default: 29500)")
    parser.add_argument("--dist-timeout", default=DEFAULT_DIST_TIMEOUT, type=float, metavar="SECONDS",
                        help="how long a rank waits for a lost peer (collectives, the rendezvous store, the "
                             "heartbeats) before it stops with one line naming it (default: 300)")


def _add_precision_flags(parser: argparse.ArgumentParser) -> None:
    """Upstream's apex mixed-precision flags, mapped to torch.amp."""
    parser.add_argument("--amp", default=False, action="store_true",
                        help="mixed precision: float16 + loss scaling on cuda/npu; on cpu bfloat16 where the CPU "
                             "runs it natively (a start-up probe checks), else float32")
    parser.add_argument("--opt-level", default=None, type=str, choices=OPT_LEVELS,
                        help="apex opt level: O1/O2/O3 use autocast, O0 keeps float32")
    parser.add_argument("--loss-scale-value", default="1024", type=str,
                        help="float16 loss scale: a number (static) or 'dynamic' (default: 1024)")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Upstream's other flags: fine-tuning, logging, validation, resume, evaluation, profiling."""
    parser.add_argument("--pretrained", nargs="?", const="./model_best.pth.tar", default=None, metavar="PATH",
                        help="fine-tune from a checkpoint or Cadene weight file with a fresh last_linear and a "
                             "frozen backbone, BatchNorm statistics included; with --evaluate, evaluate the file's "
                             "whole model, last_linear included (default path: ./model_best.pth.tar)")
    parser.add_argument("-p", "--print-freq", default=10, type=int, metavar="N", help="print frequency (steps)")
    parser.add_argument("--eval-freq", default=10, type=int, help="validate every N epochs (and after the last)")
    parser.add_argument("--stop-step-num", default=None, type=int,
                        help="stop after this many training (optimizer) steps of this run, then validate if due "
                             "(--eval-freq) and save a checkpoint that resumes mid-epoch")
    parser.add_argument("--resume", default="", type=str, metavar="PATH", help="checkpoint to continue from")
    parser.add_argument("-e", "--evaluate", dest="evaluate", action="store_true",
                        help="only evaluate (the --resume or --pretrained weights) on the val set")
    parser.add_argument("--profile", default=0, type=int,
                        help="1: write a Chrome trace of one training step to <output-dir>/output.prof (the last "
                             "warm-up step of the first epoch, outside the FPS@all window)")


def _add_data_and_model_additions(parser: argparse.ArgumentParser) -> None:
    """Additions to upstream: output, model and data options."""
    parser.add_argument("--output-dir", default=".", type=str,
                        help="checkpoints, train_log.jsonl and train_curves.png go here (default: .)")
    parser.add_argument("--num-classes", default=None, type=int,
                        help="classifier outputs (default: the dataset's class count; 1000 with --synthetic)")
    parser.add_argument("--image-size", default=224, type=int, help="train crop size (default: 224)")
    parser.add_argument("--progressive-sizes", default=None, metavar="SIZE:EPOCHS[,...]",
                        help="progressive resizing: train the first EPOCHS epochs at SIZE px (then the next phase, "
                             "then --image-size for the rest), e.g. 48:12; cheaper early epochs, same final size")
    parser.add_argument("--val-resize-size", default=None, type=int,
                        help="val short-side resize (default: 256 for 224 px, same ratio otherwise)")
    parser.add_argument("--val-crop-size", default=None, type=int, help="val centre crop (default: --image-size)")
    parser.add_argument("--label-smoothing", default=0.0, type=float, help="cross-entropy label smoothing")
    parser.add_argument("--warmup-epochs", default=0, type=int, help="linear per-step learning-rate warm-up")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training model")
    parser.add_argument("--amp-dtype", default=None, choices=sorted(AMP_DTYPES),
                        help="autocast dtype, whatever the hardware (implies --amp; default: float16 on cuda/npu, "
                             "on cpu bfloat16 where native, else float32)")
    parser.add_argument("--auto-resume", action="store_true",
                        help="continue from the newest checkpoint in --output-dir, if there is one")
    parser.add_argument("--synthetic", action="store_true",
                        help="random tensors instead of a dataset (throughput runs; --data_path is ignored)")
    parser.add_argument("--min-crop-scale", default=0.08, type=float,
                        help="smallest area fraction RandomResizedCrop may take (default: 0.08, as upstream); "
                             "larger values make small or low-resolution datasets learn faster")
    parser.add_argument("--max-crop-aspect", default=4 / 3, type=float,
                        help="RandomResizedCrop's aspect ratios span 1/F..F (default: 4/3, as upstream); wider "
                             "ranges teach the model the squashing of a DVPP-style resize to a square")


def _add_training_additions(parser: argparse.ArgumentParser) -> None:
    """Additions to upstream: optimizer, safety limits, accumulation, checkpoint cadence."""
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"),
                        help="sgd (upstream: momentum, weight decay on all parameters) or adamw (decoupled "
                             "weight decay; e.g. --lr 0.002 --wd 0.05), which learns much faster on small data")
    parser.add_argument("--max-nonfinite-steps", default=20, type=int,
                        help="stop when for this many consecutive steps the loss was NaN/inf or the float16 loss "
                             "scaler skipped the step (default: 20)")
    parser.add_argument("--accum-steps", default=1, type=int, metavar="K",
                        help="gradient accumulation: each optimizer step adds up the gradients of K batches of -b, "
                             "so it trains on -b x K images with the memory of -b; --lr, the schedule, "
                             "--stop-step-num and the logs count optimizer steps (default: 1)")
    parser.add_argument("--skip-memory-check", action="store_true",
                        help="start even when the memory estimate says a step does not fit (see docs/training.md)")
    parser.add_argument("--checkpoint-steps", default=0, type=int, metavar="N",
                        help="also write the resumable checkpoint.pth.tar after every N-th training step of the "
                             "run (global steps N, 2N, ...), in the background; 0: only at epoch ends (default)")
    parser.add_argument("--checkpoint-minutes", default=10.0, type=float, metavar="M",
                        help="also write it once M minutes have passed since the last checkpoint, mid-epoch too "
                             "(default: 10: on a real dataset a kill loses at most about 10 minutes; an epoch "
                             "shorter than that only ever gets its epoch-end checkpoint); 0: off")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an --output-dir that holds an earlier run's checkpoint.pth.tar "
                             "or model_best.pth.tar (they are replaced); without it such a run is refused")


def main(args: argparse.Namespace) -> int:
    """Check the flags and the dataset, then run :func:`main_worker` here or in spawned processes."""
    requested = args.device
    args.device = normalize_device_type(requested)
    if os.environ.get("RANK", "0") == "0":
        how = "picked automatically: npu > cuda > cpu" if requested in (None, "auto") else f"--device {requested}"
        print(f"=> device: {args.device} ({how})", flush=True)
    precision = resolve_precision(args.device, args.amp, args.opt_level, args.amp_dtype, args.loss_scale_value)
    for flag, value in (("--batch-size", args.batch_size), ("--epochs", args.epochs),
                        ("--print-freq", args.print_freq), ("--eval-freq", args.eval_freq),
                        ("--image-size", args.image_size), ("--max-nonfinite-steps", args.max_nonfinite_steps),
                        ("--accum-steps", args.accum_steps)):
        if value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if args.dist_timeout <= 0:
        raise ValueError(f"--dist-timeout {args.dist_timeout:g}: must be more than 0 seconds")
    for flag, value in (("--workers", args.workers), ("--checkpoint-steps", args.checkpoint_steps),
                        ("--checkpoint-minutes", args.checkpoint_minutes)):
        if value < 0:
            raise ValueError(f"{flag} {value:g}: must be 0 or more")
    if not 0.0 < args.min_crop_scale <= 1.0:
        raise ValueError(f"--min-crop-scale {args.min_crop_scale}: must be in (0, 1]")
    if args.max_crop_aspect < 1.0:
        raise ValueError(f"--max-crop-aspect {args.max_crop_aspect}: must be 1 or more")
    data.parse_progressive_sizes(args.progressive_sizes, args.image_size)
    plan = plan_launch(multiprocessing_distributed=args.multiprocessing_distributed, device_list=args.device_list,
                       world_size=args.world_size, rank=args.rank, gpu=args.gpu)
    check_device_ids(plan, args.device, device_count(args.device), device_list=args.device_list, gpu=args.gpu)
    backend = choose_backend(args.device, args.dist_backend) if plan.distributed else None
    if not args.synthetic:
        data.check_image_folder(args.data_path, ("val",) if args.evaluate else ("train", "val"))
    if args.pretrained and not os.path.isfile(args.pretrained):
        raise CheckpointError(f"--pretrained {args.pretrained}: no such file")
    if not args.evaluate:  # evaluation writes nothing
        check_output_dir(args, first_process=plan.node_rank == 0 and os.environ.get("LOCAL_RANK", "0") == "0")
    if plan.mode == "spawn":
        return spawn_workers(spawned_worker, plan.procs_per_node, (args, plan, backend, precision))
    return run_worker(0, args, plan, backend, precision)


def check_output_dir(args: argparse.Namespace, first_process: bool) -> None:
    """Before any work: ``--output-dir`` must be writable, and must not hold an earlier run's checkpoints
    unless this run resumes (``--resume``, ``--auto-resume``) or says ``--overwrite``. The first process
    also removes the temporaries that killed checkpoint writes left there."""
    output_dir = prepare_output_dir(args.output_dir)
    earlier = earlier_run_files(output_dir)
    if earlier and not (args.resume or args.auto_resume or args.overwrite):
        raise CheckpointError(f"--output-dir {args.output_dir} already holds {' and '.join(earlier)} of an earlier "
                              f"run; continue that run with --auto-resume (or --resume FILE), start a new one over "
                              f"it with --overwrite, or choose another --output-dir")
    if first_process:
        stale = remove_stale_temporaries(output_dir)
        if stale:
            print(f"=> removed {len(stale)} temporary file(s) that interrupted checkpoint writes left in "
                  f"'{output_dir}'", flush=True)


def main_worker(process_index: int, args: argparse.Namespace, plan: LaunchPlan, backend: str | None,
                precision: Precision) -> int:
    """One training (or evaluation) process: device, data, model, loss, optimizer, precision, memory check,
    resume, then evaluation or the epoch loop (:func:`seresnext.train_loop.train`)."""
    import_device_backend(args.device)  # a spawned process is a fresh interpreter: torch_npu before any device setup
    ctx = init_distributed(plan, process_index, backend or "gloo", device_type=args.device, dist_url=args.dist_url,
                           addr=args.addr, port=args.port, timeout=args.dist_timeout, on_lost=report_lost_peer)
    try:
        printer, device = start_process(args, ctx)
        loaded = build_loaders(args, ctx, device, printer)
        model = build_model(args, loaded.num_classes, device, printer)

        # loss, optimizer, precision
        criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing).to(device)
        val_criterion = nn.CrossEntropyLoss().to(device)
        optimizer = build_optimizer(args, model, device)
        precision = agree_on_precision(precision, ctx, device)
        scaler = precision.make_scaler()
        printer.line(f"=> precision: {precision.describe()}")
        learner = Learner(model, criterion, val_criterion, optimizer, scaler)

        # memory: a step that cannot fit is refused now, before any work
        oom_advice = check_memory(args, model, device, precision, ctx, printer, batch_size=loaded.batch_size,
                                  eval_size=loaded.crop_size, workers=loaded.workers)
        start = resume(args, learner, loaded, printer)

        runtime = Runtime(device, precision, ctx, printer)
        config = TrainConfig(print_freq=args.print_freq, channels_last=args.channels_last,
                             max_nonfinite_steps=args.max_nonfinite_steps,
                             profile_path=Path(args.output_dir) / "output.prof" if args.profile else None,
                             accum_steps=loaded.accum)
        if args.evaluate:
            with memory.explain_out_of_memory(oom_advice, "during evaluation"):
                evaluate(model, val_criterion, loaded.val_loader, runtime, config, split_size=len(loaded.val_set))
            return 0
        return train(args, learner, loaded, runtime, config, start, oom_advice)
    except BaseException as exc:
        lost_peer = ctx.watch is not None and is_peer_failure(exc)
        if lost_peer:  # name the peer while this rank's heartbeat still runs
            ctx.watch.report(ctx.watch.explain(exc))
        shutdown(ctx, "peer" if lost_peer else "error")
        if lost_peer:
            raise PeerLostError(str(exc)) from None
        raise
    finally:
        shutdown(ctx)


def report_lost_peer(finding: str) -> None:
    """The one line a rank ends with when it lost a peer (printed once per process, by PeerWatch.report)."""
    print(f"{PROG}: error: {finding}; stopping this rank too (the last checkpoint written is intact: continue "
          f"with --auto-resume once every node is back)", file=sys.stderr, flush=True)


def run_worker(process_index: int, args: argparse.Namespace, plan: LaunchPlan, backend: str | None,
               precision: Precision) -> int:
    """:func:`main_worker` with errors turned into one line on stderr and an exit status."""
    try:
        return main_worker(process_index, args, plan, backend, precision)
    except PeerLostError:  # its line is printed
        return 1
    except KNOWN_ERRORS as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        if plan.distributed and is_peer_failure(exc):  # another process died; its own log says why
            first = first_line(exc)
            print(f"{PROG}: error: lost contact with another process ({first})", file=sys.stderr, flush=True)
        else:  # a bug: keep the traceback
            traceback.print_exc()
    return 1


def spawned_worker(process_index: int, args: argparse.Namespace, plan: LaunchPlan, backend: str | None,
                   precision: Precision) -> None:
    """Entry point of a process started by ``--multiprocessing-distributed``: exits with the worker's status
    (130 / 143 after a signal), which the launcher passes on."""
    status = run_worker(process_index, args, plan, backend, precision)
    if status:
        sys.exit(status)


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run, and return the exit status (errors as one line, no traceback)."""
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except DeviceListError as exc:  # a usage error, as argparse's
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KNOWN_ERRORS as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(run())
