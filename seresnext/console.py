"""What a training process says and hears: its log lines (:class:`Printer`, through a progress bar on a terminal)
and stop requests (:class:`GracefulStop`: SIGINT/SIGTERM honoured at the next step boundary)."""
from __future__ import annotations

import signal
import sys
from collections.abc import Iterable

from .distributed import DistContext

__all__ = ["GracefulStop", "Printer", "meter_text", "batch_format"]


class GracefulStop:
    """Turns SIGINT/SIGTERM into a request that the training loop honours at its next step boundary.

    Use as a context manager; the previous handlers come back on exit. A second signal of the same run
    does not kill the process either: the checkpoint being written must not be cut short.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> GracefulStop:
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


# -------------------------------------------------------------------------------------------- printing ---

class Printer:
    """Where log lines go: the main rank prints them (through tqdm while a progress bar is shown); warnings
    go to stderr from every rank."""

    def __init__(self, ctx: DistContext, progress_bar: bool = False):
        self.ctx = ctx
        self.progress_bar = progress_bar and ctx.is_main
        self._bar_active = False
        self.npu_id = f"[npu id: {ctx.device_index} ]"

    def line(self, text: str) -> None:
        if not self.ctx.is_main:
            return
        if self._bar_active:
            from tqdm import tqdm
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(text, flush=True)

    def warn(self, text: str) -> None:
        prefix = f"[rank {self.ctx.rank}] " if self.ctx.distributed else ""
        print(f"{prefix}=> warning: {text}", file=sys.stderr, flush=True)

    def bar(self, iterable: Iterable, total: int, desc: str) -> Iterable:
        if not self.progress_bar:
            return iterable
        from tqdm import tqdm

        def wrapped():
            self._bar_active = True
            try:
                yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                                file=sys.stderr)
            finally:
                self._bar_active = False
        return wrapped()


def meter_text(name: str, val: float, avg: float, fmt: str) -> str:
    """Upstream's ``Name value (average)`` field of a progress line."""
    return f"{name} {val:{fmt}} ({avg:{fmt}})"


def batch_format(num_batches: int) -> str:
    """The ``[ i/N]`` counter of a progress line, ``i`` padded to the width of ``N``."""
    width = len(str(num_batches))
    return "[{:" + str(width) + "d}/" + str(num_batches) + "]"
