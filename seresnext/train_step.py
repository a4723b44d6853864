"""One optimizer step over ``--accum-steps`` micro-batches, and the running figures of an epoch made of them.

The figures stay on the device (the host reads them only when a line is printed); see :mod:`seresnext.engine`.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .console import Printer
from .devices import Precision
from .faults import FaultHooks

__all__ = ["NonFiniteLossError", "check_finite_weights", "too_many_bad_steps", "set_train_mode", "correct_counts",
           "StepSums", "Step", "EpochMeter", "Stepper"]


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf too long, the loss scaler skipped too many steps in a row, or the weights went
    non-finite; the run stops without saving."""


def check_finite_weights(model: nn.Module) -> None:
    """Raise :class:`NonFiniteLossError` if any parameter or buffer holds NaN/inf (nothing must save it)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise NonFiniteLossError("the model weights became non-finite (NaN/inf); stopping without saving, so "
                                 "the last checkpoint written is left as it was. Try a lower --lr, --amp with "
                                 "--loss-scale-value dynamic, or --warmup-epochs.")


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except BatchNorm layers whose weight and bias are frozen (``--pretrained``'s
    backbone): they stay in eval mode, so their running statistics stay frozen too."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parameters = list(module.parameters(recurse=False))
            if parameters and not any(p.requires_grad for p in parameters):
                module.eval()


def too_many_bad_steps(limit: int, epoch: int, step: int, *, loss_finite: bool) -> str:
    """The one-line reason a run stops after ``limit`` consecutive steps that changed nothing."""
    if loss_finite:
        what = (f"the loss scaler has skipped {limit} or more consecutive steps because their float16 gradients "
                f"overflowed (inf/NaN) although the loss was finite")
        advice = "Try a smaller --loss-scale-value (or 'dynamic'), or a lower --lr"
    else:
        what = f"the loss has been non-finite (NaN/inf) for {limit} or more consecutive steps"
        advice = "Try a lower --lr, --loss-scale-value dynamic, or --warmup-epochs"
    return (f"{what} (epoch {epoch}, step {step}); stopping without saving, so the last checkpoint written is left "
            f"as it was. {advice} (--max-nonfinite-steps sets the limit).")


@torch.no_grad()
def correct_counts(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 and top-5 hit counts of a batch, as device tensors (works on every device type)."""
    k = min(5, output.shape[1])
    hits = output.topk(k, dim=1).indices == target[:, None]
    return hits[:, 0].sum(), hits.sum()


class StepSums(NamedTuple):
    """The figures :class:`EpochMeter` sums on the device, for one step or the epoch so far."""

    loss_sum: float  # loss x images, over the steps whose loss was finite
    finite_images: float  # images of the steps whose loss was finite
    top1: float  # top-1 hits
    top5: float  # top-5 hits
    nonfinite_steps: float
    skipped_steps: float  # steps the loss scaler skipped (inf/NaN float16 gradients)


class Step(NamedTuple):
    """What one optimizer step left: its loss (mean over its effective batch), top-1/top-5 hits, images, seconds
    spent waiting for data, and whether the loss scaler skipped it (device tensors except the counts)."""

    loss: torch.Tensor
    hits: torch.Tensor
    images: int
    data_seconds: float
    skipped: torch.Tensor


class EpochMeter:
    """The running figures of one epoch on this rank.

    The :class:`StepSums` stay in one device tensor (the host reads it only when a line is printed, and the
    ranks all-reduce it at once at the end); the counts of steps, images and data time are host numbers.
    ``streak`` counts the consecutive steps that changed nothing (non-finite loss or skipped by the scaler).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums = torch.zeros(len(StepSums._fields), device=device)
        self.last = self.sums  # the last step's row
        self.streak = torch.zeros((), dtype=torch.long, device=device)
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # whether the last step's loss was
        self.bad_paths: list[str] = []
        self.steps = self.images = 0
        self.data_seconds = 0.0

    @torch.no_grad()
    def add(self, step: Step) -> None:
        self.finite = finite = torch.isfinite(step.loss)
        self.last = torch.cat([torch.stack([torch.where(finite, step.loss, 0.0) * step.images,
                                            finite.float() * step.images]),
                               step.hits, torch.stack([(~finite).float(), step.skipped.float()])])
        self.sums += self.last
        self.streak = (self.streak + 1) * (~finite | step.skipped)
        self.steps += 1
        self.images += step.images
        self.data_seconds += step.data_seconds

    def running(self) -> StepSums:
        return StepSums(*self.sums.tolist())

    def latest(self) -> StepSums:
        return StepSums(*self.last.tolist())



@dataclass(frozen=True)
class Stepper:
    """What an optimizer step needs that stays fixed for the epoch."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    hooks: FaultHooks
    printer: Printer
    device: torch.device
    memory_format: torch.memory_format
    accum: int
    no_sync: Callable | None  # DDP: skip the all-reduce of all but the last micro-batch

    def run(self, batches: Iterator, step: int, global_step: int, bad_paths: list[str]) -> Step | None:
        """One optimizer step over ``accum`` micro-batches; None when the loader has no batch left for it."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        hits = torch.zeros(2, device=self.device)
        batch = 0
        data_seconds = 0.0
        for micro in range(self.accum):
            waited = time.perf_counter()
            item = next(batches, None)
            data_seconds += time.perf_counter() - waited
            if item is None:
                if micro == 0:
                    return None
                raise RuntimeError(f"the train loader ran out in the middle of step {step} (micro-batch {micro} of "
                                   f"{self.accum}); it must yield --accum-steps batches per step")
            images, target, bad = item
            if bad:
                bad_paths.extend(bad)
                for path in bad:
                    self.printer.warn(f"unreadable train image skipped: {path}")
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            target = target.to(self.device, non_blocking=True)
            sync = self.no_sync is None or micro == self.accum - 1
            with contextlib.nullcontext() if sync else self.no_sync():
                with self.precision.autocast():
                    output = self.model(images)
                    micro_loss = self.criterion(output, target)
                if self.hooks.active:
                    micro_loss = self.hooks.corrupt_loss(global_step, micro_loss)
                self.scaler.scale(micro_loss / self.accum).backward()
            with torch.no_grad():
                loss = loss + micro_loss.detach().float() / self.accum
                hits += torch.stack(correct_counts(output, target)).float()
            batch += images.shape[0]
        self.scaler.step(self.optimizer)
        skipped = skipped_by_scaler(self.scaler, self.optimizer, self.device)  # read before update() forgets it
        self.scaler.update()
        return Step(loss, hits, batch, data_seconds, skipped)


def skipped_by_scaler(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer,
                      device: torch.device) -> torch.Tensor:
    """Whether ``scaler.step(optimizer)`` just skipped the step (inf/NaN in the unscaled float16 gradients),
    as a device bool tensor; the scale alone cannot tell, since a static scale never moves."""
    found = scaler._found_inf_per_device(optimizer) if scaler.is_enabled() else {}  # filled by step()
    if not found:
        return torch.zeros((), dtype=torch.bool, device=device)
    return sum(f.to(device) for f in found.values()) > 0
