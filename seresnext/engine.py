"""One training epoch, one validation pass, the learning-rate schedule and upstream's log lines.

Log lines kept from upstream (launch wrappers and users grep them):

* ``Epoch: [e][ i/N]\\tTime ...\\tData ...\\tLoss ...\\tAcc@1 ...\\tAcc@5 ...`` every ``--print-freq`` steps;
* ``Test: [i/N]\\tTime ...\\tLoss ...\\tAcc@1 ...\\tAcc@5 ...`` during validation;
* ``[npu id: N ] * FPS@all 582.123`` after each epoch: global images/s over steady-state steps;
* ``[npu id: N ] [AVG-ACC] * Acc@1 78.239 Acc@5 94.123`` after validation, reduced over all ranks.

``npu id`` is the device index whatever the device type. Per-step metrics stay on the device; the host
reads them (one synchronisation) only every ``--print-freq`` steps and at the end of the epoch.

An optimizer step and the epoch's running figures are :mod:`seresnext.train_step`'s; ``Printer`` and
``GracefulStop`` live in :mod:`seresnext.console`, the test-only ``FaultHooks`` in :mod:`seresnext.faults`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .console import GracefulStop, Printer, batch_format, meter_text
from .data import check_bad_fraction
from .devices import Precision, synchronize
from .distributed import DistContext, all_reduce_sum
from .faults import FaultHooks
from .train_step import (EpochMeter, NonFiniteLossError, Step, Stepper, StepSums, check_finite_weights, correct_counts,
                         set_train_mode, too_many_bad_steps)

__all__ = ["cosine_lr", "NonFiniteLossError", "GracefulStop", "Printer", "TrainConfig", "Runtime", "TrainParts",
           "EpochPlan", "EpochResult", "EvalResult", "correct_counts", "steady_state_window", "train_one_epoch",
           "evaluate", "check_finite_weights", "FPS_WARMUP_STEPS"]

FPS_WARMUP_STEPS = 5
"""Steps left out of the FPS measurement at the start of each epoch (upstream: 5)."""


# ------------------------------------------------------------------------------------------------- lr ---

def cosine_lr(base_lr: float, epoch: int, step: int, steps_per_epoch: int, epochs: int,
              warmup_epochs: int = 0) -> float:
    """Upstream's per-epoch cosine ``lr * 0.5 * (1 + cos(pi * epoch / epochs))``, after an optional linear
    per-step warm-up over ``warmup_epochs`` (the cosine then spans the remaining epochs).

    A pure function of the position, so a resumed run continues the same schedule with no saved state.
    """
    if epoch < warmup_epochs:
        done = epoch * steps_per_epoch + step + 1
        return base_lr * done / max(1, warmup_epochs * steps_per_epoch)
    span = max(1, epochs - warmup_epochs)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


def steady_state_window(steps: int, warmup: int = FPS_WARMUP_STEPS) -> int:
    """How many leading steps of an epoch to leave out of FPS: ``warmup`` when the epoch is longer than
    that, 1 for shorter epochs of 2+ steps, none for a single step (so FPS never divides by zero)."""
    if steps > warmup:
        return warmup
    return 1 if steps > 1 else 0


def _profiled_step(start_step: int, total: int, max_steps: int | None) -> int:
    """The step ``--profile`` traces: the last one before the FPS window (:func:`steady_state_window`), so that
    neither the profiler's overhead nor the trace export counts in ``FPS@all`` (a one-step epoch has only that
    step, inside its window)."""
    planned = total - start_step if max_steps is None else min(total - start_step, max_steps)
    return start_step + max(steady_state_window(planned) - 1, 0)


# ------------------------------------------------------------------------------------------------ train ---

@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop that stay fixed for a run."""

    print_freq: int = 10
    channels_last: bool = False
    max_nonfinite_steps: int = 20
    profile_path: Path | None = None  # --profile: Chrome trace of the last warm-up step, outside the FPS window
    accum_steps: int = 1  # micro-batches (loader batches) per optimizer step (--accum-steps)


@dataclass(frozen=True)
class Runtime:
    """Where and how the loops run: the device, the precision, the ranks, where lines go, and the stop request
    they honour (None: none)."""

    device: torch.device
    precision: Precision
    ctx: DistContext
    printer: Printer
    stop: GracefulStop | None = None


@dataclass(frozen=True)
class TrainParts:
    """What a training step changes or calls: the model (DDP-wrapped or not), its loss, optimizer and loss scaler,
    the learning rate at ``(epoch, step)``, and the test-only fault injection."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_at: Callable[[int, int], float]
    hooks: FaultHooks | None = None


@dataclass(frozen=True)
class EpochPlan:
    """Which steps of which epoch to run: from ``start_step`` (a mid-epoch resume), ``num_steps`` of them
    (default: as many whole steps as the loader holds), at most ``max_steps``; ``global_step`` steps of the run
    are done before it, and ``split_size`` is the size of the train split (for the unreadable-image limit)."""

    epoch: int
    split_size: int
    start_step: int = 0
    num_steps: int | None = None
    global_step: int = 0
    max_steps: int | None = None


@dataclass
class EpochResult:
    """Global (all-rank) metrics of one training epoch."""

    loss: float
    top1: float
    top5: float
    images_per_second: float
    seconds: float
    steps: int
    images: int
    skipped_images: int
    nonfinite_steps: int
    skipped_steps: int = 0  # steps the float16 loss scaler did not apply (inf/NaN gradients)
    stopped_by_signal: bool = False


class _EpochClock:
    """The epoch's time marks: its start, the (time, images) at the end of step 1 and of step
    ``FPS_WARMUP_STEPS`` that open the steady-state window (:func:`steady_state_window`), and the last print."""

    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.start = time.perf_counter()
        self.marks: dict[int, tuple[float, int]] = {0: (self.start, 0)}  # steps done -> (time, images)
        self.last_print = (self.start, 0)

    def step_done(self, steps: int, images: int) -> None:
        if steps in (1, FPS_WARMUP_STEPS):
            synchronize(self.device)
            self.marks[steps] = (time.perf_counter(), images)

    def step_times(self, steps: int) -> tuple[float, float]:
        """Seconds per step since the last print, and over the steady-state window so far."""
        now = time.perf_counter()
        warm = steady_state_window(steps)
        step_time = (now - self.last_print[0]) / max(1, steps - self.last_print[1])
        average = (now - self.marks[warm][0]) / max(1, steps - warm)
        self.last_print = (now, steps)
        return step_time, average

    def finish(self, steps: int, images: int) -> tuple[float, float]:
        """The epoch's seconds and this rank's images/s over the steady-state window."""
        synchronize(self.device)
        finish = time.perf_counter()
        warm_time, warm_images = self.marks[steady_state_window(steps)]
        rate = (images - warm_images) / max(finish - warm_time, 1e-9) if steps else 0.0
        return finish - self.start, rate


class _StepProfiler:
    """``--profile``: a Chrome trace of one step (:func:`_profiled_step`), unless the file exists already."""

    def __init__(self, path: Path | None, step: int, device: torch.device, printer: Printer):
        self.path, self.step, self.device, self.printer = path, step, device, printer
        self.active = None

    def start(self, step: int) -> None:
        if step == self.step and self.path is not None and not self.path.exists():
            self.active = torch.profiler.profile(record_shapes=True)
            self.active.__enter__()

    def stop(self, step: int) -> None:
        if self.active is not None:
            synchronize(self.device)
            self.active.__exit__(None, None, None)
            self.active.export_chrome_trace(str(self.path))
            self.printer.line(f"=> profile of step {step} written to '{self.path}'")
            self.active = None


def train_one_epoch(parts: TrainParts, loader: Iterable, plan: EpochPlan, runtime: Runtime, config: TrainConfig,
                    after_step: Callable[[int, int], None] | None = None) -> EpochResult:
    """Train for one epoch (from ``plan.start_step`` when resuming mid-epoch) and return all-rank metrics.

    A step is one optimizer step over ``config.accum_steps`` consecutive loader batches (micro-batches): each
    micro-batch's loss is divided by their number and its gradients added up, so the step equals one over the
    whole effective batch (BatchNorm still normalises each micro-batch on its own). Under DDP the gradients are
    all-reduced only on the last micro-batch, and a loss scaler steps and updates once per step. Steps, the
    learning rate, ``max_steps``, the logged loss/accuracy and FPS all count optimizer steps and effective
    batches; the loader must yield ``accum_steps`` batches for each of the ``num_steps`` steps (default: as many
    whole steps as it holds).

    Stops early, at a step boundary, after ``plan.max_steps`` steps or when ``runtime.stop`` was signalled (all
    ranks agree on it every ``print_freq`` steps). Raises :class:`NonFiniteLossError` when for
    ``config.max_nonfinite_steps`` consecutive steps the loss was non-finite or the loss scaler skipped the
    step (float16 gradients overflowed), and ``DataError`` when more than 1% of the split (``plan.split_size``
    images) is unreadable. ``after_step(epoch_steps, global_steps)`` runs after every step with the steps of
    this epoch and of the run done so far (main.py: a failed background checkpoint write, a mid-epoch
    checkpoint); what it raises ends the epoch at once.
    """
    model, optimizer, device, ctx, printer = parts.model, parts.optimizer, runtime.device, runtime.ctx, runtime.printer
    epoch, global_step, max_steps = plan.epoch, plan.global_step, plan.max_steps
    set_train_mode(model)
    num_steps = plan.num_steps if plan.num_steps is not None else len(loader) // config.accum_steps
    total = plan.start_step + num_steps
    batch_fmt = batch_format(total)
    stepper = Stepper(model, parts.criterion, optimizer, parts.scaler, runtime.precision, parts.hooks or FaultHooks(),
                      printer, device, torch.channels_last if config.channels_last else torch.contiguous_format,
                      config.accum_steps, getattr(model, "no_sync", None))
    profiler = _StepProfiler(config.profile_path, _profiled_step(plan.start_step, total, max_steps), device, printer)
    meter = EpochMeter(device)
    stopped = False
    clock = _EpochClock(device)
    batches = iter(loader)
    for i in printer.bar(range(plan.start_step, total), total - plan.start_step, f"epoch {epoch}"):
        stepper.hooks.before_step(ctx.rank, global_step)
        lr = parts.lr_at(epoch, i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        profiler.start(i)
        step = stepper.run(batches, i, global_step, meter.bad_paths)
        if step is None:  # the loader held fewer steps than expected: the epoch ends here
            break
        meter.add(step)
        profiler.stop(i)
        global_step += 1
        if after_step is not None:
            after_step(i + 1, global_step)
        clock.step_done(meter.steps, meter.images)

        limit_reached = max_steps is not None and meter.steps >= max_steps
        signalled = runtime.stop is not None and runtime.stop.requested
        if i % config.print_freq == 0 or i == total - 1 or limit_reached or (signalled and not ctx.distributed):
            printer.line(_progress_line(f"Epoch: [{epoch}]" + batch_fmt.format(i), step, meter, clock))
            if _agree_to_stop(meter, signalled, config, ctx, plan.split_size, epoch, i):
                stopped = True
                break
        if limit_reached:
            break
    return _epoch_result(meter, clock, ctx, plan.split_size, stopped, printer)


def _progress_line(head: str, step: Step, meter: EpochMeter, clock: _EpochClock) -> str:
    """Upstream's ``Epoch: [e][ i/N]\\tTime ...\\tData ...\\tLoss ...\\tAcc@1 ...\\tAcc@5 ...`` line (this rank)."""
    running = meter.running()
    step_time, average_time = clock.step_times(meter.steps)
    latest = meter.latest()
    mean_loss = running.loss_sum / running.finite_images if running.finite_images else float("nan")
    return "\t".join([
        head,
        meter_text("Time", step_time, average_time, "6.3f"),
        meter_text("Data", step.data_seconds, meter.data_seconds / meter.steps, "6.3f"),
        meter_text("Loss", step.loss.item(), mean_loss, "6.8f"),
        meter_text("Acc@1", 100.0 * latest.top1 / step.images, 100.0 * running.top1 / meter.images, "6.2f"),
        meter_text("Acc@5", 100.0 * latest.top5 / step.images, 100.0 * running.top5 / meter.images, "6.2f"),
    ])


def _agree_to_stop(meter: EpochMeter, signalled: bool, config: TrainConfig, ctx: DistContext, split_size: int,
                   epoch: int, step: int) -> bool:
    """What all ranks agree on at each print: whether to stop now (a signal on any rank); raises
    :class:`NonFiniteLossError` when any rank saw too many steps in a row that changed nothing, and ``DataError``
    when too much of the split is unreadable."""
    agreed = torch.tensor([float(signalled), float(meter.streak.item() >= config.max_nonfinite_steps),
                           float(len(meter.bad_paths))], device=meter.device)
    all_reduce_sum(agreed, ctx)
    check_bad_fraction("train", int(agreed[2].item()), split_size, meter.bad_paths)
    if agreed[1].item() > 0:
        raise NonFiniteLossError(too_many_bad_steps(config.max_nonfinite_steps, epoch, step,
                                                     loss_finite=bool(meter.finite.item())))
    return agreed[0].item() > 0


def _epoch_result(meter: EpochMeter, clock: _EpochClock, ctx: DistContext, split_size: int, stopped: bool,
                  printer: Printer) -> EpochResult:
    """Sum the epoch's figures over ranks into an :class:`EpochResult`, and print ``FPS@all``."""
    seconds, local_rate = clock.finish(meter.steps, meter.images)
    totals = torch.cat([meter.sums, torch.tensor([float(meter.images), float(len(meter.bad_paths)), local_rate],
                                                 device=meter.device)])
    all_reduce_sum(totals, ctx)
    values = totals.tolist()
    sums = StepSums(*values[:len(StepSums._fields)])
    images_all, bad_all, rate = values[len(StepSums._fields):]
    check_bad_fraction("train", int(bad_all), split_size, meter.bad_paths)
    result = EpochResult(
        loss=sums.loss_sum / sums.finite_images if sums.finite_images else float("nan"),
        top1=100.0 * sums.top1 / images_all if images_all else float("nan"),
        top5=100.0 * sums.top5 / images_all if images_all else float("nan"),
        images_per_second=rate,  # every rank runs the same steps, so the global rate is the sum
        seconds=seconds, steps=meter.steps, images=int(images_all), skipped_images=int(bad_all),
        nonfinite_steps=int(sums.nonfinite_steps), skipped_steps=int(sums.skipped_steps) // max(1, ctx.world_size),
        stopped_by_signal=stopped)
    if meter.steps:  # a resumed epoch whose steps were all done before has no rate to report
        printer.line(f"{printer.npu_id} * FPS@all {result.images_per_second:.3f}")
    return result


# ------------------------------------------------------------------------------------------- validate ---

@dataclass
class EvalResult:
    """Global (all-rank) validation metrics; every val image counted exactly once (unless ``stopped``)."""

    loss: float
    top1: float
    top5: float
    images: int
    skipped_images: int
    seconds: float
    stopped: bool = False  # a stop request cut the pass short (on any rank): the figures cover part of the set


class _ValSums(NamedTuple):
    """The figures validation sums on the device, for one batch or the pass so far."""

    loss_sum: float  # loss x images
    images: float
    top1: float  # top-1 hits
    top5: float  # top-5 hits


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: Iterable, runtime: Runtime, config: TrainConfig, *,
             split_size: int) -> EvalResult:
    """Validate on this rank's shard, then sum hits, loss and counts over ranks for global top-1/top-5.

    A ``runtime.stop`` request ends the pass at the next batch boundary (each rank on its own, so that a
    launcher's kill grace period is not spent validating); the result is then marked ``stopped`` on every rank
    and prints no ``[AVG-ACC]`` line. Of ``config`` it uses ``print_freq`` and ``channels_last``.
    """
    device, ctx, printer, stop = runtime.device, runtime.ctx, runtime.printer, runtime.stop
    model.eval()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    stats = torch.zeros(len(_ValSums._fields), device=device)
    bad_paths: list[str] = []
    num_batches = len(loader)
    batch_fmt = batch_format(num_batches)
    start = last = time.perf_counter()
    stopped = False
    for i, (images, target, bad) in enumerate(printer.bar(loader, num_batches, "validate")):
        if stop is not None and stop.requested:
            stopped = True
            break
        for item in bad:
            printer.warn(f"unreadable val image left out: {item}")
        bad_paths.extend(bad)
        if images.numel() == 0:
            continue
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        with runtime.precision.autocast():
            output = model(images)
        loss = criterion(output.float(), target)
        top1_hits, top5_hits = correct_counts(output, target)
        batch = images.shape[0]
        step = torch.stack([loss.float() * batch, torch.tensor(float(batch), device=device),
                            top1_hits.float(), top5_hits.float()])
        stats += step
        if i % config.print_freq == 0 and ctx.is_main:
            so_far, current = _ValSums(*stats.tolist()), _ValSums(*step.tolist())
            now = time.perf_counter()
            printer.line(_test_line("Test: " + batch_fmt.format(i), now - last, (now - start) / (i + 1), current,
                                    so_far))
            last = now
    return _eval_result(stats, bad_paths, stopped, runtime, split_size, start)


def _test_line(head: str, batch_time: float, average_time: float, current: _ValSums, so_far: _ValSums) -> str:
    """Upstream's ``Test: [i/N]\\tTime ...\\tLoss ...\\tAcc@1 ...\\tAcc@5 ...`` line (this rank)."""
    return "\t".join([
        head,
        meter_text("Time", batch_time, average_time, "6.3f"),
        meter_text("Loss", current.loss_sum / current.images, so_far.loss_sum / so_far.images, ".4e"),
        meter_text("Acc@1", 100.0 * current.top1 / current.images, 100.0 * so_far.top1 / so_far.images, "6.2f"),
        meter_text("Acc@5", 100.0 * current.top5 / current.images, 100.0 * so_far.top5 / so_far.images, "6.2f"),
    ])


def _eval_result(stats: torch.Tensor, bad_paths: list[str], stopped: bool, runtime: Runtime, split_size: int,
                 start: float) -> EvalResult:
    """Sum the pass's figures over ranks into an :class:`EvalResult`, and print ``[AVG-ACC]``."""
    ctx, printer = runtime.ctx, runtime.printer
    totals = torch.cat([stats, torch.tensor([float(len(bad_paths)), float(stopped)], device=runtime.device)])
    all_reduce_sum(totals, ctx)
    values = totals.tolist()
    sums = _ValSums(*values[:len(_ValSums._fields)])
    bad_all, stopped_ranks = values[len(_ValSums._fields):]
    images = sums.images
    check_bad_fraction("val", int(bad_all), split_size, bad_paths)
    if stopped_ranks:
        printer.line(f"=> validation stopped by a signal after {int(images)} images; not counted")
        nan = float("nan")
        return EvalResult(nan, nan, nan, int(images), int(bad_all), time.perf_counter() - start, stopped=True)
    if images == 0:
        raise ValueError("validation saw no readable image")
    result = EvalResult(sums.loss_sum / images, 100.0 * sums.top1 / images, 100.0 * sums.top5 / images, int(images),
                        int(bad_all), time.perf_counter() - start)
    printer.line(f"{printer.npu_id} [AVG-ACC] * Acc@1 {result.top1:.3f} Acc@5 {result.top5:.3f}")
    printer.line(f"=> validation loss {result.loss:.4f} over {result.images} images ({ctx.world_size} process(es), "
                 f"{result.skipped_images} unreadable left out)")
    return result
