"""The phases of main.py before its first step, each from the parsed flags: the process (device, threads,
seeds), the data loaders, the model and its optimizer, the memory check, and the resume from a checkpoint."""
from __future__ import annotations

import argparse
import functools
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data, memory
from .checkpoint import (CheckpointError, TrainingCheckpoint, apply_state_dict, find_latest_checkpoint,
                         load_model_weights, load_training_checkpoint, restore_optimizer)
from .console import Printer
from .devices import Precision, make_device, pins_memory
from .distributed import DistContext
from .model import se_resnext50_32x4d

__all__ = ["SYNTHETIC_TRAIN_STEPS", "TrainData", "Learner", "ResumePoint", "start_process", "build_loaders",
           "build_model", "build_optimizer", "check_memory", "resume"]

SYNTHETIC_TRAIN_STEPS = 50  # --synthetic: an epoch is this many global batches; validation is 2


@dataclass(frozen=True)
class TrainData:
    """The datasets and loaders of this process, and how its batches make optimizer steps (the train fields are
    None when ``--evaluate`` reads only the val folder)."""

    batch_size: int  # images per loader batch of this process
    workers: int  # loader workers of this process
    crop_size: int  # the val crop
    num_classes: int
    classes: list[str]
    class_names: list[str]
    val_set: Any
    val_loader: Any
    train_set: Any = None
    train_sampler: data.TrainSampler | None = None
    train_loader: Any = None
    steps_per_epoch: int = 0
    accum: int = 1  # loader batches per optimizer step


@dataclass(frozen=True)
class Learner:
    """The model (unwrapped: validation and checkpoints use it) and what trains it."""

    model: nn.Module
    criterion: nn.Module
    val_criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


@dataclass(frozen=True)
class ResumePoint:
    """Where the run starts: at ``step`` of ``epoch`` after ``images`` samples of it per process, ``global_step``
    steps into the run; ``path`` is the checkpoint resumed from ("" for none)."""

    epoch: int
    step: int = 0
    images: int = 0
    global_step: int = 0
    best_acc1: float = 0.0
    path: str = ""


def start_process(args: argparse.Namespace, ctx: DistContext) -> tuple[Printer, torch.device]:
    """This process's printer and device, its CPU threads, and the ``--seed`` of weight init."""
    printer = Printer(ctx, progress_bar=sys.stdout.isatty())
    device = make_device(args.device, ctx.device_index)
    printer.line(f"{printer.npu_id} Use {args.device.upper()}: {ctx.device_index} for training "
                 f"({ctx.world_size} process(es), backend {ctx.backend or 'none'})")
    if device.type == "cpu" and ctx.local_world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
    if args.seed is not None:
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return printer, device


def _datasets(args: argparse.Namespace, global_batch: int, resize_size: int, crop_size: int,
              data_seed: int) -> tuple[Any, Any, list[str], list[str], int]:
    """The train set (None for ``--evaluate`` on a dataset), the val set, the classes, their names, and the
    number of classifier outputs."""
    if args.synthetic:
        num_classes = args.num_classes or 1000
        train_set = data.SyntheticImages(SYNTHETIC_TRAIN_STEPS * global_batch * args.accum_steps, args.image_size,
                                         num_classes, seed=data_seed)
        val_set = data.SyntheticImages(2 * global_batch, crop_size, num_classes, seed=data_seed + 1)
        return train_set, val_set, train_set.classes, train_set.classes, num_classes
    root = Path(args.data_path)
    train_tf = functools.partial(data.train_transform, min_crop_scale=args.min_crop_scale,
                                 max_crop_aspect=args.max_crop_aspect)
    train_set = None if args.evaluate else data.RobustImageFolder(
        root / "train", train_tf(args.image_size), substitute=True, seed=data_seed, transform_at=train_tf)
    val_set = data.RobustImageFolder(root / "val", data.val_transform(resize_size, crop_size), substitute=False)
    classes = val_set.classes
    class_names = data.read_class_names(root, classes)
    num_classes = args.num_classes or len(classes)
    if num_classes < len(classes):
        raise ValueError(f"--num-classes {num_classes}: the dataset has {len(classes)} classes")
    return train_set, val_set, classes, class_names, num_classes


def build_loaders(args: argparse.Namespace, ctx: DistContext, device: torch.device, printer: Printer) -> TrainData:
    """The datasets and loaders; ``-b`` and ``-j`` are split across the node's processes."""
    batch_size = max(1, args.batch_size // ctx.local_world_size)
    workers = (args.workers + ctx.local_world_size - 1) // ctx.local_world_size
    data_seed = args.seed if args.seed is not None else 0
    resize_size, crop_size = data.val_sizes(args.image_size, args.val_resize_size, args.val_crop_size)
    train_set, val_set, classes, class_names, num_classes = _datasets(args, batch_size * ctx.world_size,
                                                                      resize_size, crop_size, data_seed)
    pin = pins_memory(device.type)
    val_loader = data.make_loader(val_set, data.ShardSampler(len(val_set), ctx.world_size, ctx.rank),
                                  batch_size, workers, train=False, pin_memory=pin)
    loaded = TrainData(batch_size, workers, crop_size, num_classes, classes, class_names, val_set, val_loader)
    if train_set is None:
        return loaded
    train_sampler = data.TrainSampler(train_set, ctx.world_size, ctx.rank, seed=data_seed)
    train_loader = data.make_loader(train_set, train_sampler, batch_size, workers, train=True, pin_memory=pin)
    steps_per_epoch, accum = data.accumulation_plan(train_sampler.num_samples, batch_size, args.accum_steps)
    if accum < args.accum_steps:
        printer.line(f"=> --accum-steps {args.accum_steps}: an epoch holds only {accum} batch(es) of "
                     f"{batch_size} per process, so each optimizer step accumulates {accum}")
    printer.line(f"=> batch size {batch_size * accum * ctx.world_size} per optimizer step: {ctx.world_size} "
                 f"process(es) x {batch_size} images x {accum} accumulated batch(es) (-b {args.batch_size}, "
                 f"--accum-steps {args.accum_steps})")
    return TrainData(batch_size, workers, crop_size, num_classes, classes, class_names, val_set, val_loader,
                     train_set, train_sampler, train_loader, steps_per_epoch, accum)


def build_model(args: argparse.Namespace, num_classes: int, device: torch.device, printer: Printer) -> nn.Module:
    """SE-ResNeXt50_32x4d on ``device``, with the ``--pretrained`` weights (scored as they are with
    ``--evaluate``, else a fresh last_linear on a frozen backbone)."""
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
    return model


def build_optimizer(args: argparse.Namespace, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """``--optimizer`` over the trainable parameters (fused kernels where the device has them)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}  # one kernel, not a loop over tensors
    if args.optimizer == "adamw":
        return torch.optim.AdamW(trainable, args.lr, weight_decay=args.weight_decay, **fused)
    return torch.optim.SGD(trainable, args.lr, momentum=args.momentum, weight_decay=args.weight_decay, **fused)


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


def _checkpoint_to_resume(args: argparse.Namespace, printer: Printer) -> str:
    """``--resume``, or with ``--auto-resume`` the newest checkpoint in ``--output-dir``; "" for none."""
    path = args.resume
    if not path and args.auto_resume:
        latest = find_latest_checkpoint(args.output_dir)
        path = str(latest) if latest else ""
        if not latest:
            printer.line(f"=> no checkpoint found at '{Path(args.output_dir)}'")
    if path and not os.path.isfile(path):
        printer.line(f"=> no checkpoint found at '{path}'")
        raise CheckpointError(f"--resume {path}: no such file")
    return path


def resume(args: argparse.Namespace, learner: Learner, loaded: TrainData, printer: Printer) -> ResumePoint:
    """Load the checkpoint to resume from into the model (and, when training, the optimizer and loss scaler),
    and return where the run starts (``--start-epoch`` without one)."""
    path = _checkpoint_to_resume(args, printer)
    if not path:
        return ResumePoint(args.start_epoch)
    printer.line(f"=> loading checkpoint '{path}'")
    raw = load_training_checkpoint(path, map_location="cpu")
    if not args.synthetic and raw.get("classes") not in (None, list(loaded.classes)):
        raise CheckpointError(f"{path}: trained on other classes than {args.data_path} holds")
    checkpoint = TrainingCheckpoint.from_dict(raw)
    apply_state_dict(learner.model, checkpoint.state_dict, path)
    if not args.evaluate:
        _restore_training_state(args, learner, checkpoint, path, printer)
    step, images = checkpoint.epoch_step, 0
    if step and not args.evaluate:
        step, images = _resume_mid_epoch(checkpoint, loaded, printer)
    printer.line(f"=> loaded checkpoint '{path}' (epoch {checkpoint.epoch})")
    return ResumePoint(checkpoint.epoch, step, images, checkpoint.global_step, checkpoint.best_acc1, path)


def _restore_training_state(args: argparse.Namespace, learner: Learner, checkpoint: TrainingCheckpoint, path: str,
                            printer: Printer) -> None:
    """The optimizer's and the loss scaler's state, saying which settings this run changes."""
    changes = restore_optimizer(learner.optimizer, checkpoint.optimizer, path) if checkpoint.optimizer else []
    saved_lr = (checkpoint.args or {}).get("lr")
    if isinstance(saved_lr, float) and saved_lr != args.lr:  # the schedule follows --lr
        changes.insert(0, f"--lr {args.lr:g} (checkpoint: {saved_lr:g})")
    if changes:
        printer.line(f"=> resuming with changed settings, applied from here on: {', '.join(changes)}")
    if checkpoint.scaler and learner.scaler.is_enabled():
        learner.scaler.load_state_dict(checkpoint.scaler)


def _resume_mid_epoch(checkpoint: TrainingCheckpoint, loaded: TrainData, printer: Printer) -> tuple[int, int]:
    """Where an epoch that a checkpoint interrupted goes on (:func:`seresnext.data.resume_position`), saying so
    when this run takes another number of images per optimizer step than the checkpoint's."""
    images_per_step, steps_per_epoch = loaded.batch_size * loaded.accum, loaded.steps_per_epoch
    seen, saved = checkpoint.epoch_images, checkpoint.images_per_step
    start_step, start_images = data.resume_position(loaded.train_sampler.num_samples, images_per_step,
                                                    steps_per_epoch, checkpoint.epoch_step, seen, saved)
    if saved is not None and saved != images_per_step:
        printer.line(f"=> the checkpoint stopped epoch {checkpoint.epoch} after {seen} images per process at "
                     f"{saved} per optimizer step; at {images_per_step} per step now (-b x --accum-steps, per "
                     f"process) the epoch goes on after those images with {steps_per_epoch - start_step} step(s)")
    return start_step, start_images
