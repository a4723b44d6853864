"""Telling a lost peer from a bug: heartbeats in the rendezvous store (:class:`PeerWatch`), and what a
collective's failure says about the process that caused it.

A lost peer ends the run within a bound: the rendezvous store waits at most ``--dist-timeout``
(:data:`seresnext.distributed.DEFAULT_DIST_TIMEOUT` by default), and a :class:`PeerWatch` keeps a heartbeat per
rank in the store, so that a rank can name the peer it lost and ends even where a collective would wait longer
or none is running.
"""
from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import torch.distributed as dist

from .errors import first_line

__all__ = ["PeerWatch", "PeerLostError", "StoreLostError", "HEARTBEAT_SECONDS", "short_error", "is_peer_failure"]


class PeerLostError(RuntimeError):
    """A peer was lost and :meth:`PeerWatch.report` already printed the one line that says which."""


class StoreLostError(RuntimeError):
    """The rendezvous store failed or did not answer an operation within the timeout."""


class _BoundedStore:
    """A store whose operations give up after a time limit: the TCP store's own timeout covers waiting for
    a key, but an operation on a store whose process is frozen (a hung node) waits for its answer forever.
    Operations run one at a time on a daemon thread; after one failure or overrun, every later one fails
    at once (each failure also makes torch log a warning with a stack trace)."""

    def __init__(self, store, seconds: float):
        self.store, self.seconds = store, seconds
        self.failed = False
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="peer-watch-store", daemon=True).start()

    def _serve(self) -> None:
        while True:
            future, name, args = self._requests.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(getattr(self.store, name)(*args))
                except BaseException as exc:
                    future.set_exception(exc)

    def call(self, name: str, *args, seconds: float | None = None):
        if self.failed:
            raise StoreLostError("the store failed before")
        future: Future = Future()
        self._requests.put((future, name, args))
        try:
            return future.result(timeout=self.seconds if seconds is None else seconds)
        except Exception as exc:  # the store's own errors, or TimeoutError
            self.failed = True
            raise StoreLostError(str(exc) or type(exc).__name__) from None

    def add(self, key: str, value: int) -> int:
        return self.call("add", key, value)

    def check(self, key: str) -> bool:
        return self.call("check", [key])

    def text(self, key: str) -> str | None:
        """The value of ``key``, or None when it is not set."""
        return self.call("get", key).decode() if self.check(key) else None


HEARTBEAT_SECONDS = 1.0
"""How often each rank's :class:`PeerWatch` bumps its heartbeat and looks at its peers'."""


class PeerWatch:
    """Heartbeats in the rendezvous store, so that a rank can name a lost peer, and every rank ends within
    ``timeout`` (plus a few seconds) when one is lost.

    A thread per rank bumps the counter ``beat/<rank>`` every :data:`HEARTBEAT_SECONDS`. Rank 0 watches every
    other rank's counter and the others watch rank 0's; a counter that has not moved for ``timeout`` seconds,
    or a store that fails or leaves an operation unanswered for as long, means that rank, its node or the
    store's node was lost. The watch then publishes the finding under ``lost``, which every watch reads each
    beat, and ends its process with one line (``on_lost``): a rank that waits in a collective that would wait
    longer, or runs for long without one (a validation pass, a slow start), ends all the same. A rank whose
    collective fails first asks :meth:`explain` which peer stopped, and reports it itself.
    """

    def __init__(self, store, rank: int, world_size: int, *, timeout: float, me: str, store_address: str,
                 store_keeper: str = "rank 0", on_lost: Callable[[str], None] | None = None,
                 interval: float = HEARTBEAT_SECONDS, end_process: Callable[[int], None] = os._exit):
        self.store = _BoundedStore(store, timeout)
        self.rank, self.world_size, self.timeout, self.interval = rank, world_size, timeout, interval
        self.store_address, self.store_keeper = store_address, store_keeper
        self.on_lost = on_lost or (lambda finding: print(f"error: {finding}", file=sys.stderr, flush=True))
        self._end_process = end_process
        self._watched = [r for r in range(world_size) if r != rank] if rank == 0 else [0]
        self._stop = threading.Event()
        self._report_lock = threading.Lock()
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="peer-watch", daemon=True)
        store.set(f"who/{rank}", me)
        store.add(f"beat/{rank}", 1)

    def start(self) -> None:
        self._thread.start()

    def stop(self, outcome: str = "done") -> None:
        """This rank ends (the first call counts): ``done`` (normally, or stopped by a signal with the others),
        ``error`` (its own error, which its log names: the peers report it), ``peer`` (it lost a peer: nothing
        for the others to add)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._publish(f"left/{self.rank}", outcome)

    def report(self, finding: str) -> bool:
        """Print ``finding`` through ``on_lost`` unless this process already reported one; publish it for the
        other ranks' watches. Returns whether this call printed."""
        with self._report_lock:
            if self._reported:
                return False
            self._reported = True
        self.on_lost(finding)
        self._publish("lost", finding)
        return True

    def _publish(self, key: str, value: str) -> None:
        """Tell the peers, if the store still answers within a few seconds (they find out by themselves)."""
        try:
            self.store.call("set", key, value, seconds=min(self.timeout, 5.0))
        except StoreLostError:
            pass

    def explain(self, error: BaseException) -> str:
        """After a collective or store operation failed: which peer stopped. Looks at every peer's heartbeat for
        a few beats (a live rank's moves meanwhile, whatever its main thread is doing)."""
        first = short_error(error)
        try:
            lost = self.store.text("lost")
            if lost is not None:
                return lost
            others = [r for r in range(self.world_size) if r != self.rank]
            before = {r: self.store.add(f"beat/{r}", 0) for r in others}
            time.sleep(3 * self.interval)
            gone = [r for r in others if self.store.add(f"beat/{r}", 0) == before[r]]
            left = {r: self.store.text(f"left/{r}") for r in gone}
            silent = [r for r in gone if left[r] is None]
            if silent:
                return f"lost {self._describe(silent)}: it stopped answering ({first})"
            failed = [r for r in gone if left[r] == "error"]
            if failed:
                return f"{self._describe(failed)} stopped with an error, which its own log names ({first})"
        except StoreLostError:
            return self._store_lost()
        return f"lost contact with another process ({first})"

    def _describe(self, ranks: list[int]) -> str:
        return ", ".join(f"rank {r} of {self.world_size} ({self.store.text(f'who/{r}') or 'never started'})"
                         for r in ranks)

    def _store_lost(self) -> str:
        return (f"lost the rendezvous store at {self.store_address}: {self.store_keeper}, which keeps it, or its "
                f"node stopped answering")

    def _run(self) -> None:
        seen = {r: (None, time.monotonic()) for r in self._watched}  # rank -> (its counter, when it last moved)
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                self.store.add(f"beat/{self.rank}", 1)
                finding = self.store.text("lost")
                for r in self._watched:
                    count = self.store.add(f"beat/{r}", 0)
                    if count != seen[r][0]:
                        seen[r] = (count, now)
                quiet = {r: self.store.text(f"left/{r}") for r in self._watched
                         if now - seen[r][1] > self.interval * 3}
                stalled = [r for r, left in quiet.items() if left is None and now - seen[r][1] > self.timeout]
                failed = [r for r, left in quiet.items() if left == "error"]
                if finding is None and stalled:
                    finding = (f"lost {self._describe(stalled)}: no heartbeat for {self.timeout:g} s "
                               f"(--dist-timeout), so its process or node stopped")
                elif finding is None and failed:
                    finding = f"{self._describe(failed)} stopped with an error, which its own log names"
            except StoreLostError:
                finding = self._store_lost()
            if finding is not None and not self._stop.is_set():
                if self.report(finding):
                    sys.stdout.flush()
                    self._end_process(1)
                return


def short_error(error: BaseException) -> str:
    """The first line of a backend's error without its source location and advice, e.g. ``Read error
    [10.0.0.2]:944: Connection reset by peer`` or ``Timed out waiting 300000ms for recv operation to
    complete``."""
    first = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", first_line(error))
    return first.split(". This is typically caused")[0].rstrip(". ")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process died (not a bug in this one)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "gloo/transport",
                                      "Application timeout caused pair closure",  # gloo's own timeout fired first
                                      "NCCL communicator was aborted", "HCCL"))
