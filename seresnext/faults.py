"""Test-only fault injection for the training loop (used by the test suite; never set in real runs).

* ``SERESNEXT_TEST_NAN_STEPS=A-B`` makes the loss NaN at global steps A..B (``A-`` for "from A on");
* ``SERESNEXT_TEST_KILL_AT_STEP=R:S`` makes rank R SIGKILL itself before global step S, on the first
  attempt of a torchrun job only (``TORCHELASTIC_RESTART_COUNT`` unset or 0), once the checkpoint writes it
  started have landed (so a test knows which checkpoint the kill leaves behind).
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["FaultHooks"]


@dataclass(frozen=True)
class FaultHooks:
    """Test-only fault injection, read from the environment (see the module docstring)."""

    nan_first: int | None = None
    nan_last: int | None = None
    kill_rank: int | None = None
    kill_step: int | None = None
    settle: Callable[[], object] | None = field(default=None, compare=False)  # waits for writes in flight

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ,
                 settle: Callable[[], object] | None = None) -> FaultHooks:
        nan_first = nan_last = kill_rank = kill_step = None
        if env.get("SERESNEXT_TEST_NAN_STEPS"):
            first, _, last = env["SERESNEXT_TEST_NAN_STEPS"].partition("-")
            nan_first, nan_last = int(first), (int(last) if last else None)
        if env.get("SERESNEXT_TEST_KILL_AT_STEP") and env.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            rank, _, step = env["SERESNEXT_TEST_KILL_AT_STEP"].partition(":")
            kill_rank, kill_step = int(rank), int(step)
        return cls(nan_first, nan_last, kill_rank, kill_step, settle)

    @property
    def active(self) -> bool:
        return self.nan_first is not None or self.kill_step is not None

    def before_step(self, rank: int, global_step: int) -> None:
        if self.kill_step is not None and rank == self.kill_rank and global_step == self.kill_step:
            if self.settle is not None:
                self.settle()
            print(f"[test hook] rank {rank} SIGKILLs itself at step {global_step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def corrupt_loss(self, global_step: int, loss: torch.Tensor) -> torch.Tensor:
        if self.nan_first is not None and global_step >= self.nan_first and \
                (self.nan_last is None or global_step <= self.nan_last):
            return loss * float("nan")
        return loss
