"""A dataset run's three stages and the queues between them (see :mod:`seresnext.runner`):

    producer thread --ready--> inference (calling thread, ``parallel_requests`` calls in flight) --inferred-->
    writer thread

The producer reads and preprocesses each batch with the loader threads and hands it on through ``ready``
(``prefetch`` batches ahead); the calling thread submits each batch to the model and hands the outputs, oldest
batch first, through ``inferred`` to the writer, which writes the dumps. Each stage owns its own figures;
only the list of failures is shared (producer and writer), under a lock.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .backends import Backend
from .formats import InfoEntry
from .model_input import InputPlan

__all__ = ["BatchStages", "timed_calls"]

_END = object()
Span = tuple[float, float]


def timed_calls(backend: Backend, array: np.ndarray, loop: int) -> tuple[np.ndarray, list[Span]]:
    """``loop`` model calls on one batch: the last outputs and each call's (start, end)."""
    spans = []
    for _ in range(loop):
        started = time.perf_counter()
        outputs = backend.run(array)
        spans.append((started, time.perf_counter()))
    return outputs, spans


class BatchStages:
    """One run of the batches through producer, inference and writer; afterwards its fields hold what each
    stage did: images inferred, dumps written, failures, the model calls' spans and the time in each stage.

    ``load`` turns an entry into (input, seconds reading, seconds preprocessing); ``save`` writes one image's
    outputs and returns the dump's path (None: nothing is written); ``where`` names an entry in failures.
    """

    def __init__(self, backend: Backend, plan: InputPlan, load: Callable, *, loaders: int, prefetch: int,
                 loop: int, save: Callable[[InfoEntry, np.ndarray], Path] | None, where: Callable[[InfoEntry], str],
                 progress: Callable[[int], None] | None = None):
        self.backend, self.plan, self.load, self.save, self.where = backend, plan, load, save, where
        self.loaders, self.loop, self.progress = max(1, loaders), loop, progress
        self.in_flight = max(1, backend.parallel_requests)
        self.ready: queue.Queue = queue.Queue(maxsize=max(1, prefetch))  # producer -> inference
        self.inferred: queue.Queue = queue.Queue(maxsize=max(2, prefetch * 2))  # inference -> writer
        self.stop = threading.Event()
        self._failures_lock = threading.Lock()
        self.failed: list[tuple[str, str]] = []  # (where, reason), from the producer and the writer
        self.written: list[tuple[str, str]] = []  # (input file, dump file), by the writer
        self.images = 0  # inferred, by the calling thread
        self.spans: list[Span] = []  # (start, end) of every model call
        self.loaded, self.read_seconds, self.preprocess_seconds = 0, 0.0, 0.0  # by the producer
        self.post_seconds = 0.0  # by the writer

    def run(self, batches: Sequence[Sequence[InfoEntry]]) -> bool:
        """Run every batch; True when Ctrl-C stopped it (the batches already inferred are written first)."""
        interrupted = False
        with ThreadPoolExecutor(max_workers=self.loaders, thread_name_prefix="runner-load") as pool, \
                ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="runner-infer") as infer_pool:
            producer = threading.Thread(target=self._produce, args=(pool, batches), name="runner-batches",
                                        daemon=True)
            writer = threading.Thread(target=self._write, name="runner-dumps", daemon=True)
            producer.start()
            writer.start()
            pending: collections.deque = collections.deque()  # batches in the model, oldest first
            try:
                self._infer(infer_pool, pending)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                self.stop.set()
                for _, call in pending:
                    call.cancel()
                if interrupted:  # the batches already in the model: let them finish, and write them
                    for kept, call in pending:
                        if not call.cancelled() and call.exception() is None:
                            self._finish(kept, call)
                self.inferred.put(_END)  # the writer writes the batches already inferred, then stops
                writer.join()
                producer.join()
        return interrupted

    # -------------------------------------------------------------------------------------- producer
    def _produce(self, pool: ThreadPoolExecutor, batches: Sequence[Sequence[InfoEntry]]) -> None:
        try:
            for batch_entries in batches:
                if self.stop.is_set():
                    break
                batch = self._assemble(batch_entries, list(pool.map(self._guarded_load, batch_entries)))
                if batch is not None:
                    self._hand_on(batch)
        except BaseException as exc:  # surface anything unexpected in the calling thread
            self._hand_on(exc)
            return
        self._hand_on(_END)

    def _guarded_load(self, entry: InfoEntry):
        try:
            return self.load(entry), None
        except (ValueError, OSError) as exc:
            return None, str(exc)

    def _assemble(self, batch_entries: Sequence[InfoEntry], outcomes: list) -> tuple | None:
        """The loaded images as one model input (zero-padded to a static batch), or None when none loaded."""
        plan = self.plan
        array = np.zeros((plan.batch if plan.static_batch else len(batch_entries), *plan.item_shape),
                         dtype=self.backend.input_dtype)
        kept = []
        for entry, (value, error) in zip(batch_entries, outcomes):
            if error is not None:
                with self._failures_lock:
                    self.failed.append((self.where(entry), error))
                continue
            item, read_s, pre_s = value
            assemble = time.perf_counter()
            array[len(kept)] = item
            self.read_seconds += read_s
            self.preprocess_seconds += pre_s + (time.perf_counter() - assemble)
            kept.append(entry)
        if not kept:
            return None
        if not plan.static_batch:
            array = array[:len(kept)]
        self.loaded += len(kept)
        return kept, array

    def _hand_on(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # -------------------------------------------------------------------------------------- inference
    def _infer(self, infer_pool: ThreadPoolExecutor, pending: collections.deque) -> None:
        while True:
            item = self.ready.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            kept, array = item
            pending.append((kept, infer_pool.submit(timed_calls, self.backend, array, self.loop)))
            if len(pending) >= self.in_flight:
                self._finish(*pending.popleft())
        while pending:
            self._finish(*pending.popleft())

    def _finish(self, kept: list[InfoEntry], call: Future) -> None:
        outputs, call_spans = call.result()
        self.spans.extend(call_spans)
        self.images += len(kept)
        self.inferred.put((kept, outputs))

    # -------------------------------------------------------------------------------------- writer
    def _write(self) -> None:
        while True:
            item = self.inferred.get()
            if item is _END:
                return
            kept, outputs = item
            started = time.perf_counter()
            for row, entry in enumerate(kept):
                if self.save is None:
                    continue
                try:
                    path = self.save(entry, outputs[row])
                    self.written.append((entry.path, str(path)))
                except OSError as exc:
                    with self._failures_lock:
                        self.failed.append((self.where(entry), f"cannot write its dump ({exc})"))
            self.post_seconds += time.perf_counter() - started
            if self.progress:
                self.progress(len(kept))
