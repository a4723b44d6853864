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
import functools
import os
import random
import sys
import traceback
from pathlib import Path

import torch
from torch import nn

from seresnext import data
from seresnext.checkpoint import (BEST_NAME, CHECKPOINT_NAME, CheckpointError, CheckpointInterval,
                                  apply_state_dict, earlier_run_files, find_latest_checkpoint, load_model_weights,
                                  load_training_checkpoint, plain_data, prepare_output_dir, remove_stale_temporaries,
                                  restore_optimizer, CheckpointWriter)
from seresnext.devices import (AMP_DTYPES, OPT_LEVELS, Precision, device_count, import_device_backend,
                               make_device, normalize_device_type, pins_memory, resolve_precision)
from seresnext import memory
from seresnext.distributed import (DEFAULT_DIST_TIMEOUT, DistContext, agree_on_precision, any_rank, average_buffers,
                                   choose_backend, init_distributed, shutdown, wrap_ddp)
from seresnext.launch import DeviceListError, LaunchPlan, check_device_ids, plan_launch, spawn_workers
from seresnext.peer_watch import PeerLostError, is_peer_failure
from seresnext.errors import first_line
from seresnext.engine import (EpochPlan, GracefulStop, NonFiniteLossError, Printer, Runtime, TrainConfig, TrainParts,
                              check_finite_weights, cosine_lr, evaluate, train_one_epoch)
from seresnext.faults import FaultHooks
from seresnext.model import se_resnext50_32x4d
from seresnext.training_log import LOG_NAME, PLOT_NAME, append_record, drop_records_from, plot_curves, read_records

PROG = "main.py"
SYNTHETIC_TRAIN_STEPS = 50  # --synthetic: an epoch is this many global batches; validation is 2
KNOWN_ERRORS = (data.DataError, CheckpointError, NonFiniteLossError, memory.NotEnoughMemoryError, ValueError,
                OSError)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Upstream's flags (same spelling and defaults; prefixes such as ``--data=`` and ``--epoch=`` still
    work), then the additions. Keep new flags from starting with ``--data`` or ``--epoch``."""
    parser = argparse.ArgumentParser(prog=PROG, add_help=add_help,
                                     description="SE-ResNeXt50_32x4d ImageNet training (Ascend ModelZoo main.py)")
    # dataset
    parser.add_argument("--data_path", metavar="DIR", default="/dataset/imagenet",
                        help="dataset root with train/ and val/ in ImageFolder layout (default: /dataset/imagenet)")
    parser.add_argument("-j", "--workers", default=4, type=int, metavar="N",
                        help="data loading workers for the whole node, split across its processes (default: 4)")
    # training
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
    # devices and processes
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
    # mixed precision (apex flags, mapped to torch.amp)
    parser.add_argument("--amp", default=False, action="store_true",
                        help="mixed precision: float16 + loss scaling on cuda/npu; on cpu bfloat16 where the CPU "
                             "runs it natively (a start-up probe checks), else float32")
    parser.add_argument("--opt-level", default=None, type=str, choices=OPT_LEVELS,
                        help="apex opt level: O1/O2/O3 use autocast, O0 keeps float32")
    parser.add_argument("--loss-scale-value", default="1024", type=str,
                        help="float16 loss scale: a number (static) or 'dynamic' (default: 1024)")
    # other upstream flags
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
    # additions
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
    return parser


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
    """One training (or evaluation) process: device, data, model, loss, optimizer, AMP, resume, DDP, loop."""
    import_device_backend(args.device)  # a spawned process is a fresh interpreter: torch_npu before any device setup
    ctx = init_distributed(plan, process_index, backend or "gloo", device_type=args.device, dist_url=args.dist_url,
                           addr=args.addr, port=args.port, timeout=args.dist_timeout, on_lost=report_lost_peer)
    try:
        printer = Printer(ctx, progress_bar=sys.stdout.isatty())
        device = make_device(args.device, ctx.device_index)
        printer.line(f"{printer.npu_id} Use {args.device.upper()}: {ctx.device_index} for training "
                     f"({ctx.world_size} process(es), backend {ctx.backend or 'none'})")
        if device.type == "cpu" and ctx.local_world_size > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
        batch_size = max(1, args.batch_size // ctx.local_world_size)
        workers = (args.workers + ctx.local_world_size - 1) // ctx.local_world_size
        data_seed = args.seed if args.seed is not None else 0
        if args.seed is not None:
            random.seed(args.seed)
            torch.manual_seed(args.seed)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        output_dir = Path(args.output_dir)

        # data
        resize_size, crop_size = data.val_sizes(args.image_size, args.val_resize_size, args.val_crop_size)
        if args.synthetic:
            num_classes = args.num_classes or 1000
            global_batch = batch_size * ctx.world_size
            train_set = data.SyntheticImages(SYNTHETIC_TRAIN_STEPS * global_batch * args.accum_steps, args.image_size,
                                             num_classes, seed=data_seed)
            val_set = data.SyntheticImages(2 * global_batch, crop_size, num_classes, seed=data_seed + 1)
            classes = class_names = train_set.classes
        else:
            root = Path(args.data_path)
            train_tf = functools.partial(data.train_transform, min_crop_scale=args.min_crop_scale,
                                         max_crop_aspect=args.max_crop_aspect)
            train_set = None if args.evaluate else data.RobustImageFolder(
                root / "train", train_tf(args.image_size), substitute=True, seed=data_seed, transform_at=train_tf)
            val_set = data.RobustImageFolder(root / "val", data.val_transform(resize_size, crop_size),
                                             substitute=False)
            classes = val_set.classes
            class_names = data.read_class_names(root, classes)
            num_classes = args.num_classes or len(classes)
            if num_classes < len(classes):
                raise ValueError(f"--num-classes {num_classes}: the dataset has {len(classes)} classes")
        pin = pins_memory(device.type)
        val_loader = data.make_loader(val_set, data.ShardSampler(len(val_set), ctx.world_size, ctx.rank),
                                      batch_size, workers, train=False, pin_memory=pin)
        if train_set is not None:
            train_sampler = data.TrainSampler(train_set, ctx.world_size, ctx.rank, seed=data_seed)
            train_loader = data.make_loader(train_set, train_sampler, batch_size, workers, train=True,
                                            pin_memory=pin)
            steps_per_epoch, accum = data.accumulation_plan(train_sampler.num_samples, batch_size, args.accum_steps)
            if accum < args.accum_steps:
                printer.line(f"=> --accum-steps {args.accum_steps}: an epoch holds only {accum} batch(es) of "
                             f"{batch_size} per process, so each optimizer step accumulates {accum}")
            printer.line(f"=> batch size {batch_size * accum * ctx.world_size} per optimizer step: {ctx.world_size} "
                         f"process(es) x {batch_size} images x {accum} accumulated batch(es) (-b {args.batch_size}, "
                         f"--accum-steps {args.accum_steps})")

        # model
        model = se_resnext50_32x4d(num_classes=num_classes)
        if args.pretrained and args.evaluate:  # score the weights themselves, not a random head on them
            try:
                load_model_weights(model, args.pretrained)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc}; --pretrained with --evaluate scores the file's own last_linear, so "
                                      f"its classes must be the {num_classes} of this run") from None
            printer.line(f"=> evaluating '{args.pretrained}' as it is (last_linear included)")
        elif args.pretrained:
            load_model_weights(model, args.pretrained, skip_prefixes=("last_linear.",))
            for name, param in model.named_parameters():
                param.requires_grad = name.startswith("last_linear.")
            printer.line(f"=> fine-tuning from '{args.pretrained}': new last_linear ({num_classes} classes), "
                         f"backbone frozen (weights and BatchNorm statistics)")
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        model.to(device, memory_format=memory_format)

        # loss, optimizer, precision
        criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing).to(device)
        val_criterion = nn.CrossEntropyLoss().to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        fused = {"fused": True} if device.type in ("cpu", "cuda") else {}  # one kernel, not a loop over tensors
        if args.optimizer == "adamw":
            optimizer = torch.optim.AdamW(trainable, args.lr, weight_decay=args.weight_decay, **fused)
        else:
            optimizer = torch.optim.SGD(trainable, args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                        **fused)
        precision = agree_on_precision(precision, ctx, device)
        scaler = precision.make_scaler()
        printer.line(f"=> precision: {precision.describe()}")

        # memory: a step that cannot fit is refused now, before any work
        oom_advice = check_memory(args, model, device, precision, ctx, printer, batch_size=batch_size,
                                  eval_size=crop_size, workers=workers)

        # resume
        start_epoch, start_step, start_images, global_step, best_acc1 = args.start_epoch, 0, 0, 0, 0.0
        resume = args.resume
        if not resume and args.auto_resume:
            latest = find_latest_checkpoint(output_dir)
            resume = str(latest) if latest else ""
            if not latest:
                printer.line(f"=> no checkpoint found at '{output_dir}'")
        if resume:
            if not os.path.isfile(resume):
                printer.line(f"=> no checkpoint found at '{resume}'")
                raise CheckpointError(f"--resume {resume}: no such file")
            printer.line(f"=> loading checkpoint '{resume}'")
            checkpoint = load_training_checkpoint(resume, map_location="cpu")
            if not args.synthetic and checkpoint.get("classes") not in (None, list(classes)):
                raise CheckpointError(f"{resume}: trained on other classes than {args.data_path} holds")
            apply_state_dict(model, checkpoint["state_dict"], resume)
            if not args.evaluate:
                changes = restore_optimizer(optimizer, checkpoint["optimizer"], resume) \
                    if checkpoint.get("optimizer") else []
                saved_lr = (checkpoint.get("args") or {}).get("lr")
                if isinstance(saved_lr, float) and saved_lr != args.lr:  # the schedule follows --lr
                    changes.insert(0, f"--lr {args.lr:g} (checkpoint: {saved_lr:g})")
                if changes:
                    printer.line(f"=> resuming with changed settings, applied from here on: {', '.join(changes)}")
                if checkpoint.get("scaler") and scaler.is_enabled():
                    scaler.load_state_dict(checkpoint["scaler"])
            start_epoch = int(checkpoint["epoch"])
            start_step = int(checkpoint.get("epoch_step", 0))
            if start_step and not args.evaluate:
                start_step, start_images = resume_mid_epoch(checkpoint, train_sampler.num_samples,
                                                            batch_size * accum, steps_per_epoch, printer)
            global_step = int(checkpoint.get("global_step", 0))
            best_acc1 = float(checkpoint.get("best_acc1", 0.0))
            printer.line(f"=> loaded checkpoint '{resume}' (epoch {checkpoint['epoch']})")

        if args.evaluate:
            with memory.explain_out_of_memory(oom_advice, "during evaluation"):
                evaluate(model, val_criterion, val_loader, Runtime(device, precision, ctx, printer),
                         TrainConfig(print_freq=args.print_freq, channels_last=args.channels_last),
                         split_size=len(val_set))
            return 0

        # compile, DDP (validation and checkpoints use the plain model)
        train_model = torch.compile(model) if args.compile else model
        if ctx.distributed:
            train_model = wrap_ddp(train_model, ctx, device)

        # training loop
        log_path = output_dir / LOG_NAME
        if ctx.is_main:
            drop_records_from(log_path, start_epoch)
        config = TrainConfig(print_freq=args.print_freq, channels_last=args.channels_last,
                             max_nonfinite_steps=args.max_nonfinite_steps,
                             profile_path=output_dir / "output.prof" if args.profile else None, accum_steps=accum)
        lr_at = lambda epoch, step: cosine_lr(args.lr, epoch, step, steps_per_epoch, args.epochs,  # noqa: E731
                                              args.warmup_epochs)
        steps_left = args.stop_step_num
        status = 0
        phases = data.parse_progressive_sizes(args.progressive_sizes, args.image_size)
        train_size = args.image_size
        best_on_disk = bool(resume) and (output_dir / BEST_NAME).exists()  # a new run replaces an old model_best
        if start_step:
            printer.line(f"=> resuming epoch {start_epoch} at step {start_step} of {steps_per_epoch} "
                         f"(global step {global_step})")
        # checkpoints are written in the background; an out-of-memory error becomes one line (after the write in
        # flight has finished: the last checkpoint stays whole)
        with data.workers_stopped_after(train_loader), GracefulStop() as stop, CheckpointWriter() as checkpoints, \
                memory.explain_out_of_memory(oom_advice + f"; the last checkpoint written in {output_dir} is intact "
                                             f"(continue from it with --auto-resume)", "during training"):
            hooks = FaultHooks.from_env(settle=checkpoints.wait)
            runtime = Runtime(device, precision, ctx, printer, stop)
            parts = TrainParts(train_model, criterion, optimizer, scaler, lr_at, hooks)
            interval = CheckpointInterval(args.checkpoint_steps, args.checkpoint_minutes * 60.0)

            def save(next_epoch: int, next_step: int, next_images: int, steps_done: int, is_best: bool) -> None:
                """Hand the resumable state to the background writer (rank 0's: DDP keeps the weights equal on
                every rank; mid-epoch, the BatchNorm statistics are rank 0's until the epoch end averages them).
                ``next_images``: the samples of ``next_epoch`` each process has trained on, for a resume with
                other images per optimizer step."""
                checkpoints.submit({
                    "epoch": next_epoch,
                    "epoch_step": next_step,
                    "epoch_images": next_images,
                    "images_per_step": batch_size * accum,
                    "global_step": steps_done,
                    "state_dict": model.state_dict(),
                    "best_acc1": best_acc1,
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "args": plain_data(vars(args)),
                    "arch": "se_resnext50_32x4d",
                    "num_classes": num_classes,
                    "classes": list(classes),
                    "class_names": list(class_names),
                }, output_dir, is_best)
                interval.restart()

            def between_steps(epoch: int, skip: int, skip_images: int, epoch_steps: int, steps_done: int) -> None:
                """After each optimizer step (rank 0): stop at once if a background write failed; write a
                mid-epoch checkpoint when --checkpoint-steps / --checkpoint-minutes say one is due (the epoch
                started at step ``skip``, after ``skip_images`` samples per process)."""
                checkpoints.check()
                if interval.due(steps_done):
                    save(epoch, epoch_steps, skip_images + (epoch_steps - skip) * batch_size * accum, steps_done,
                         is_best=False)
                    printer.line(f"=> mid-epoch checkpoint (epoch {epoch}, step {epoch_steps} of {steps_per_epoch}, "
                                 f"global step {steps_done}): writing '{output_dir / CHECKPOINT_NAME}' in the "
                                 f"background")

            for epoch in range(start_epoch, args.epochs):
                skip, skip_images = (start_step, start_images) if epoch == start_epoch else (0, 0)
                if (data.train_size_at(epoch, args.image_size, phases) != train_size
                        or (phases and epoch == start_epoch)):
                    train_size = data.train_size_at(epoch, args.image_size, phases)
                    printer.line(f"=> Epoch[{epoch}] training at {train_size}x{train_size} px (--progressive-sizes)")
                train_sampler.set_position(epoch, skip_images, size=train_size)
                printer.line(f"=> Now Epoch[{epoch}] setting lr: {lr_at(epoch, skip):.4f}")
                plan = EpochPlan(epoch, len(train_set), start_step=skip, num_steps=steps_per_epoch - skip,
                                 global_step=global_step, max_steps=steps_left)
                result = train_one_epoch(
                    parts, train_loader, plan, runtime, config,
                    after_step=functools.partial(between_steps, epoch, skip, skip_images) if ctx.is_main else None)
                global_step += result.steps
                steps_left = None if steps_left is None else steps_left - result.steps
                epoch_done = skip + result.steps >= steps_per_epoch
                average_buffers(model, ctx)
                check_finite_weights(model)

                val = None
                due = (epoch + 1) % args.eval_freq == 0 or epoch == args.epochs - 1
                if due and not result.stopped_by_signal:
                    val = evaluate(model, val_criterion, val_loader, runtime, config, split_size=len(val_set))
                    val = None if val.stopped else val
                # a signal took the validation this epoch was due: the checkpoint resumes at it
                val_pending = due and epoch_done and val is None
                peak = memory.peak_bytes(device)  # this process's, so far: to hold against the "=> memory:" line
                # the first validated epoch always writes model_best (upstream skipped it at 0% top-1)
                is_best = val is not None and (val.top1 > best_acc1 or not best_on_disk)
                best_on_disk = best_on_disk or is_best
                best_acc1 = max(best_acc1, val.top1) if val is not None else best_acc1
                next_epoch, next_step = (epoch + 1, 0) if epoch_done and not val_pending else \
                    (epoch, skip + result.steps)
                # samples of next_epoch this process has trained on, for a resume with other images per step
                next_images = 0 if next_step == 0 else skip_images + result.steps * batch_size * accum
                if ctx.is_main:
                    save(next_epoch, next_step, next_images, global_step, is_best)
                    append_record(log_path, {
                        "epoch": epoch, "lr": lr_at(epoch, skip), "image_size": train_size,
                        "batch_size": batch_size * accum * ctx.world_size, "train_loss": result.loss,
                        "train_top1": result.top1, "train_top5": result.top5,
                        "images_per_second": result.images_per_second,
                        "seconds": result.seconds + (val.seconds if val else 0.0), "steps": result.steps,
                        "skipped_images": result.skipped_images, "nonfinite_steps": result.nonfinite_steps,
                        "skipped_steps": result.skipped_steps, "peak_memory_bytes": peak,
                        "val_loss": val.loss if val else None, "val_top1": val.top1 if val else None,
                        "val_top5": val.top5 if val else None})
                summary = (f"=> Epoch[{epoch}] summary: train loss {result.loss:.4f} top-1 {result.top1:.3f} "
                           f"top-5 {result.top5:.3f} | {result.steps} steps, {result.images_per_second:.1f} "
                           f"images/s, {result.seconds:.1f} s | {result.skipped_images} unreadable image(s) "
                           f"skipped, {result.nonfinite_steps} non-finite step(s), {result.skipped_steps} step(s) "
                           f"skipped by the loss scaler")
                if val is not None:
                    summary += f" | val loss {val.loss:.4f} top-1 {val.top1:.3f} top-5 {val.top5:.3f}"
                if peak is not None:
                    summary += f" | peak memory {memory.gib(peak)}"
                printer.line(summary)
                if any_rank(stop.requested, ctx, device):
                    checkpoints.wait()
                    printer.line(f"=> interrupted by {stop.name or 'a signal on another rank'}: saved a resumable "
                                 f"checkpoint '{output_dir / CHECKPOINT_NAME}' (epoch {next_epoch}, step {next_step}"
                                 f"{', its validation still to run' if val_pending else ''}); continue with --resume "
                                 f"or --auto-resume")
                    status = 128 + (stop.signum or 15)
                    break
                if steps_left is not None and steps_left <= 0:
                    printer.line(f"=> stopped after --stop-step-num {args.stop_step_num} steps")
                    break
        printer.line(f"=> best Acc@1 {best_acc1:.3f}")
        if ctx.is_main:
            plot = plot_curves(read_records(log_path), output_dir / PLOT_NAME)
            if plot:
                printer.line(f"=> training curves written to '{plot}'")
        return status
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


def check_memory(args: argparse.Namespace, model: nn.Module, device: torch.device, precision: Precision,
                 ctx: DistContext, printer: Printer, *, batch_size: int, eval_size: int, workers: int) -> str:
    """Refuse a run whose step cannot fit, before any work (:func:`seresnext.memory.check_step_memory`), unless
    ``--skip-memory-check``; returns the advice an out-of-memory error during the run is given."""
    if args.skip_memory_check:
        printer.line("=> memory check skipped (--skip-memory-check)")
        return memory.smaller_batch_advice(args.batch_size, args.accum_steps, ctx.local_world_size, batch_size // 2)
    phases = data.parse_progressive_sizes(args.progressive_sizes, args.image_size)
    shape = memory.RunShape(batch=batch_size, image_size=max([args.image_size, *(size for size, _ in phases)]),
                            eval_size=eval_size, workers=workers,
                            optimizer_states=2 if args.optimizer == "adamw" else int(args.momentum != 0),
                            distributed=ctx.distributed, evaluate_only=args.evaluate,
                            channels_last=args.channels_last)
    result = memory.check_step_memory(model, device, precision, shape, ctx, batch_flag=args.batch_size,
                                      accum_steps=args.accum_steps)
    printer.line(result.line)
    return result.oom_advice


def resume_mid_epoch(checkpoint: dict, num_samples: int, images_per_step: int, steps_per_epoch: int,
                     printer: Printer) -> tuple[int, int]:
    """Where an epoch that a checkpoint interrupted goes on (:func:`seresnext.data.resume_position`), saying so
    when this run takes another number of images per optimizer step than the checkpoint's."""
    epoch_step, seen, saved = (checkpoint.get(key) for key in ("epoch_step", "epoch_images", "images_per_step"))
    start_step, start_images = data.resume_position(num_samples, images_per_step, steps_per_epoch, int(epoch_step),
                                                    seen, saved)
    if saved is not None and saved != images_per_step:
        printer.line(f"=> the checkpoint stopped epoch {checkpoint['epoch']} after {seen} images per process at "
                     f"{saved} per optimizer step; at {images_per_step} per step now (-b x --accum-steps, per "
                     f"process) the epoch goes on after those images with {steps_per_epoch - start_step} step(s)")
    return start_step, start_images


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
