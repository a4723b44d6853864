"""main.py's epoch loop: train, validate when due, write the resumable checkpoint and the epoch's record, and
stop on a signal or ``--stop-step-num``. Checkpoints are written in the background (rank 0's state: DDP keeps
the weights equal on every rank; mid-epoch, the BatchNorm statistics are rank 0's until the epoch end averages
them)."""
from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data, memory
from .checkpoint import BEST_NAME, CHECKPOINT_NAME, CheckpointInterval, CheckpointWriter, TrainingCheckpoint, plain_data
from .distributed import any_rank, average_buffers, wrap_ddp
from .engine import (EpochPlan, EpochResult, EvalResult, GracefulStop, Runtime, TrainConfig, TrainParts,
                     check_finite_weights, cosine_lr, evaluate, train_one_epoch)
from .faults import FaultHooks
from .train_setup import Learner, ResumePoint, TrainData
from .training_log import LOG_NAME, PLOT_NAME, append_record, drop_records_from, plot_curves, read_records

__all__ = ["train"]


@dataclass
class _Progress:
    """Where the run stands; the loop moves it on after each epoch."""

    global_step: int
    steps_left: int | None  # --stop-step-num's steps still to run (None: no limit)
    best_acc1: float
    best_on_disk: bool  # whether this run's model_best.pth.tar exists (a new run replaces an old one)
    train_size: int  # the train crop of the last epoch (--progressive-sizes)


@dataclass(frozen=True)
class _Position:
    """Where a checkpoint resumes: ``step`` of ``epoch`` after ``images`` samples of it per process (for a resume
    with other images per optimizer step), ``global_step`` steps into the run."""

    epoch: int
    step: int
    images: int
    global_step: int


def train(args: argparse.Namespace, learner: Learner, loaded: TrainData, runtime: Runtime, config: TrainConfig,
          start: ResumePoint, oom_advice: str) -> int:
    """Train from ``start`` to ``--epochs`` (or a stop); returns the exit status (128 + the signal after one)."""
    ctx, printer, output_dir = runtime.ctx, runtime.printer, Path(args.output_dir)
    # compile, DDP (validation and checkpoints use the plain model)
    train_model = torch.compile(learner.model) if args.compile else learner.model
    if ctx.distributed:
        train_model = wrap_ddp(train_model, ctx, runtime.device)
    if ctx.is_main:
        drop_records_from(output_dir / LOG_NAME, start.epoch)
    progress = _Progress(start.global_step, args.stop_step_num, start.best_acc1,
                         bool(start.path) and (output_dir / BEST_NAME).exists(), args.image_size)
    if start.step:
        printer.line(f"=> resuming epoch {start.epoch} at step {start.step} of {loaded.steps_per_epoch} "
                     f"(global step {progress.global_step})")
    status = 0
    # an out-of-memory error becomes one line (after the write in flight has finished: the last checkpoint stays
    # whole)
    with data.workers_stopped_after(loaded.train_loader), GracefulStop() as stop, CheckpointWriter() as writer, \
            memory.explain_out_of_memory(oom_advice + f"; the last checkpoint written in {output_dir} is intact "
                                         f"(continue from it with --auto-resume)", "during training"):
        lr_at = functools.partial(_lr_at, args, loaded.steps_per_epoch)
        parts = TrainParts(train_model, learner.criterion, learner.optimizer, learner.scaler, lr_at,
                           FaultHooks.from_env(settle=writer.wait))
        loop = _EpochLoop(args, learner, loaded, dataclasses.replace(runtime, stop=stop), config, parts, writer,
                          progress)
        for epoch in range(start.epoch, args.epochs):
            skip = (start.step, start.images) if epoch == start.epoch else (0, 0)
            status = loop.run_epoch(epoch, *skip, first=epoch == start.epoch)
            if status is not None:
                break
    printer.line(f"=> best Acc@1 {progress.best_acc1:.3f}")
    if ctx.is_main:
        plot = plot_curves(read_records(output_dir / LOG_NAME), output_dir / PLOT_NAME)
        if plot:
            printer.line(f"=> training curves written to '{plot}'")
    return status or 0


def _lr_at(args: argparse.Namespace, steps_per_epoch: int, epoch: int, step: int) -> float:
    return cosine_lr(args.lr, epoch, step, steps_per_epoch, args.epochs, args.warmup_epochs)


class _EpochLoop:
    """One epoch after another, with what they share."""

    def __init__(self, args: argparse.Namespace, learner: Learner, loaded: TrainData, runtime: Runtime,
                 config: TrainConfig, parts: TrainParts, writer: CheckpointWriter, progress: _Progress):
        self.args, self.learner, self.loaded, self.runtime, self.config = args, learner, loaded, runtime, config
        self.parts, self.writer, self.progress = parts, writer, progress
        self.output_dir = Path(args.output_dir)
        self.phases = data.parse_progressive_sizes(args.progressive_sizes, args.image_size)
        self.interval = CheckpointInterval(args.checkpoint_steps, args.checkpoint_minutes * 60.0)
        self.images_per_step = loaded.batch_size * loaded.accum  # per process

    def run_epoch(self, epoch: int, skip: int, skip_images: int, first: bool) -> int | None:
        """Train ``epoch`` from step ``skip`` (after ``skip_images`` samples per process), validate if due, save
        and record it; returns the exit status when the run stops here, else None."""
        args, loaded, runtime, progress = self.args, self.loaded, self.runtime, self.progress
        printer = runtime.printer
        size = data.train_size_at(epoch, args.image_size, self.phases)
        if size != progress.train_size or (self.phases and first):
            progress.train_size = size
            printer.line(f"=> Epoch[{epoch}] training at {size}x{size} px (--progressive-sizes)")
        loaded.train_sampler.set_position(epoch, skip_images, size=progress.train_size)
        printer.line(f"=> Now Epoch[{epoch}] setting lr: {self.parts.lr_at(epoch, skip):.4f}")
        plan = EpochPlan(epoch, len(loaded.train_set), start_step=skip, num_steps=loaded.steps_per_epoch - skip,
                         global_step=progress.global_step, max_steps=progress.steps_left)
        after_step = functools.partial(self._between_steps, epoch, skip, skip_images) if runtime.ctx.is_main \
            else None
        result = train_one_epoch(self.parts, loaded.train_loader, plan, runtime, self.config, after_step=after_step)
        progress.global_step += result.steps
        progress.steps_left = None if progress.steps_left is None else progress.steps_left - result.steps
        epoch_done = skip + result.steps >= loaded.steps_per_epoch
        average_buffers(self.learner.model, runtime.ctx)
        check_finite_weights(self.learner.model)

        val, due = self._validate_if_due(epoch, result)
        # a signal took the validation this epoch was due: the checkpoint resumes at it
        val_pending = due and epoch_done and val is None
        peak = memory.peak_bytes(runtime.device)  # this process's, so far: to hold against the "=> memory:" line
        # the first validated epoch always writes model_best (upstream skipped it at 0% top-1)
        is_best = val is not None and (val.top1 > progress.best_acc1 or not progress.best_on_disk)
        progress.best_on_disk = progress.best_on_disk or is_best
        progress.best_acc1 = max(progress.best_acc1, val.top1) if val is not None else progress.best_acc1
        next_epoch, next_step = (epoch + 1, 0) if epoch_done and not val_pending else (epoch, skip + result.steps)
        next_images = 0 if next_step == 0 else skip_images + result.steps * self.images_per_step
        if runtime.ctx.is_main:
            self._save(_Position(next_epoch, next_step, next_images, progress.global_step), is_best)
            append_record(self.output_dir / LOG_NAME, self._record(epoch, skip, result, val, peak))
        printer.line(_summary(epoch, result, val, peak))
        return self._stop_status(next_epoch, next_step, val_pending)

    def _validate_if_due(self, epoch: int, result: EpochResult) -> tuple[EvalResult | None, bool]:
        """The epoch's validation (None when not due or cut short by a signal), and whether it was due."""
        due = (epoch + 1) % self.args.eval_freq == 0 or epoch == self.args.epochs - 1
        if not due or result.stopped_by_signal:
            return None, due
        val = evaluate(self.learner.model, self.learner.val_criterion, self.loaded.val_loader, self.runtime,
                       self.config, split_size=len(self.loaded.val_set))
        return (None if val.stopped else val), due

    def _stop_status(self, next_epoch: int, next_step: int, val_pending: bool) -> int | None:
        """The exit status when a signal (on any rank) or ``--stop-step-num`` ends the run after this epoch."""
        runtime, printer = self.runtime, self.runtime.printer
        if any_rank(runtime.stop.requested, runtime.ctx, runtime.device):
            self.writer.wait()
            printer.line(f"=> interrupted by {runtime.stop.name or 'a signal on another rank'}: saved a resumable "
                         f"checkpoint '{self.output_dir / CHECKPOINT_NAME}' (epoch {next_epoch}, step {next_step}"
                         f"{', its validation still to run' if val_pending else ''}); continue with --resume "
                         f"or --auto-resume")
            return 128 + (runtime.stop.signum or 15)
        if self.progress.steps_left is not None and self.progress.steps_left <= 0:
            printer.line(f"=> stopped after --stop-step-num {self.args.stop_step_num} steps")
            return 0
        return None

    def _between_steps(self, epoch: int, skip: int, skip_images: int, epoch_steps: int, steps_done: int) -> None:
        """After each optimizer step (rank 0): stop at once if a background write failed; write a mid-epoch
        checkpoint when --checkpoint-steps / --checkpoint-minutes say one is due (the epoch started at step
        ``skip``, after ``skip_images`` samples per process)."""
        self.writer.check()
        if self.interval.due(steps_done):
            images = skip_images + (epoch_steps - skip) * self.images_per_step
            self._save(_Position(epoch, epoch_steps, images, steps_done), is_best=False)
            self.runtime.printer.line(
                f"=> mid-epoch checkpoint (epoch {epoch}, step {epoch_steps} of {self.loaded.steps_per_epoch}, "
                f"global step {steps_done}): writing '{self.output_dir / CHECKPOINT_NAME}' in the background")

    def _save(self, position: _Position, is_best: bool) -> None:
        """Hand the resumable state at ``position`` to the background writer."""
        learner, loaded = self.learner, self.loaded
        state = TrainingCheckpoint(
            epoch=position.epoch, epoch_step=position.step, epoch_images=position.images,
            images_per_step=self.images_per_step, global_step=position.global_step,
            state_dict=learner.model.state_dict(), best_acc1=self.progress.best_acc1,
            optimizer=learner.optimizer.state_dict(), scaler=learner.scaler.state_dict(),
            args=plain_data(vars(self.args)), num_classes=loaded.num_classes, classes=list(loaded.classes),
            class_names=list(loaded.class_names))
        self.writer.submit(state.to_dict(), self.output_dir, is_best)
        self.interval.restart()

    def _record(self, epoch: int, skip: int, result: EpochResult, val: EvalResult | None, peak: int | None) -> dict:
        """The epoch's line of train_log.jsonl."""
        ctx = self.runtime.ctx
        return {
            "epoch": epoch, "lr": self.parts.lr_at(epoch, skip), "image_size": self.progress.train_size,
            "batch_size": self.images_per_step * ctx.world_size, "train_loss": result.loss,
            "train_top1": result.top1, "train_top5": result.top5, "images_per_second": result.images_per_second,
            "seconds": result.seconds + (val.seconds if val else 0.0), "steps": result.steps,
            "skipped_images": result.skipped_images, "nonfinite_steps": result.nonfinite_steps,
            "skipped_steps": result.skipped_steps, "peak_memory_bytes": peak,
            "val_loss": val.loss if val else None, "val_top1": val.top1 if val else None,
            "val_top5": val.top5 if val else None}


def _summary(epoch: int, result: EpochResult, val: EvalResult | None, peak: int | None) -> str:
    """The ``=> Epoch[e] summary: ...`` line."""
    summary = (f"=> Epoch[{epoch}] summary: train loss {result.loss:.4f} top-1 {result.top1:.3f} "
               f"top-5 {result.top5:.3f} | {result.steps} steps, {result.images_per_second:.1f} "
               f"images/s, {result.seconds:.1f} s | {result.skipped_images} unreadable image(s) "
               f"skipped, {result.nonfinite_steps} non-finite step(s), {result.skipped_steps} step(s) "
               f"skipped by the loss scaler")
    if val is not None:
        summary += f" | val loss {val.loss:.4f} top-1 {val.top1:.3f} top-5 {val.top5:.3f}"
    if peak is not None:
        summary += f" | peak memory {memory.gib(peak)}"
    return summary
