"""Process-group setup and the few collectives training needs.

Four ways to run, all ending in the same :class:`DistContext`:

* one process (the default);
* ``--multiprocessing-distributed`` (upstream): one spawned process per ``--device-list`` entry, rendezvous at
  ``--addr``/``--port`` (or ``--dist-url``); ``--world-size`` nodes with ``--rank`` this node's index;
* ``torchrun`` (single- or multi-node), detected from its environment (``LOCAL_RANK``, ``WORLD_SIZE``, ...);
* one process per node started by hand with ``--world-size N --rank R`` (pytorch/examples style).

The backend follows the device (hccl on npu, nccl on cuda, gloo on cpu) unless ``--dist-backend`` names one.

A lost peer ends the run within a bound: the process group and its rendezvous store get ``--dist-timeout``
(default :data:`DEFAULT_DIST_TIMEOUT`, far below gloo's 30 minutes and NCCL's 10), and a :class:`PeerWatch`
keeps a heartbeat per rank in the store, so that a rank can name the peer it lost and ends even where a
collective would wait longer or none is running.
"""
from __future__ import annotations

import inspect
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .devices import Precision, dist_backend_for, make_device
from .errors import first_line

__all__ = ["DistContext", "LaunchPlan", "parse_device_list", "torchrun_env", "plan_launch", "check_device_ids",
           "DeviceListError", "choose_backend",
           "init_distributed", "join_round", "own_client", "shutdown", "wrap_ddp", "all_reduce_sum", "all_reduce_max",
           "any_rank", "agree_on_precision", "average_buffers", "is_peer_failure", "short_error", "spawn_workers",
           "PeerWatch", "PeerLostError", "DEFAULT_DIST_TIMEOUT"]

DEFAULT_DIST_TIMEOUT = 300.0
"""Seconds a collective or store operation may wait for a peer (``--dist-timeout``): long enough for ranks that
reach a collective minutes apart (a cold dataset scan on one node, a slow validation shard), well under the
backends' own defaults (gloo 30 minutes, NCCL 10)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global/local rank and size, the device index it drives, the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device_index: int = 0
    backend: str | None = None  # None: no process group
    watch: PeerWatch | None = field(default=None, compare=False, repr=False)  # with a process group

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class LaunchPlan:
    """How the processes of a run are laid out, decided once before any process starts."""

    mode: str  # "single", "spawn", "torchrun" or "manual"
    procs_per_node: int
    world_size: int
    node_rank: int
    device_ids: tuple[int, ...]

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def parse_device_list(text: str) -> tuple[int, ...]:
    """``--device-list '0,1,2'`` to sorted device ids (upstream sorted them too)."""
    try:
        ids = sorted({int(x) for x in str(text).split(",") if x.strip() != ""})
    except ValueError:
        raise ValueError(f"--device-list {text!r}: expected comma-separated device ids, e.g. 0,1,2,3") from None
    if not ids or ids[0] < 0:
        raise ValueError(f"--device-list {text!r}: expected comma-separated device ids, e.g. 0,1,2,3")
    return tuple(ids)


def torchrun_env(env: Mapping[str, str] = os.environ) -> dict[str, int] | None:
    """The rank layout torchrun (or any launcher that sets its variables) put in the environment."""
    if "LOCAL_RANK" not in env or "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        layout = {k: int(env[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        layout["LOCAL_WORLD_SIZE"] = int(env.get("LOCAL_WORLD_SIZE", layout["WORLD_SIZE"]))
        layout["GROUP_RANK"] = int(env.get("GROUP_RANK", 0))
    except ValueError:
        raise ValueError("torchrun environment: RANK / WORLD_SIZE / LOCAL_RANK are not integers") from None
    return layout


def plan_launch(*, multiprocessing_distributed: bool, device_list: str, world_size: int, rank: int,
                gpu: int | None, env: Mapping[str, str] = os.environ) -> LaunchPlan:
    """Decide the launch mode from the flags and the environment (torchrun's variables win)."""
    device_ids = parse_device_list(device_list)
    launched = torchrun_env(env)
    if launched is not None:
        return LaunchPlan("torchrun", launched["LOCAL_WORLD_SIZE"], launched["WORLD_SIZE"],
                          launched["GROUP_RANK"], device_ids)
    if multiprocessing_distributed:
        nodes = max(world_size, 1)
        node_rank = max(rank, 0)
        if node_rank >= nodes:
            raise ValueError(f"--rank {rank}: must be below --world-size {world_size} (the number of nodes)")
        return LaunchPlan("spawn", len(device_ids), nodes * len(device_ids), node_rank, device_ids)
    if world_size > 1:
        if not 0 <= rank < world_size:
            raise ValueError(f"--rank {rank}: one process per node needs 0 <= --rank < --world-size {world_size}")
        return LaunchPlan("manual", 1, world_size, rank, (gpu or 0,))
    return LaunchPlan("single", 1, 1, 0, (gpu or 0,))


class DeviceListError(ValueError):
    """``--device-list`` / ``--gpu`` (or torchrun's layout) name devices this machine does not have."""


def _present(device_type: str, count: int) -> str:
    if count <= 0:
        return f"no {device_type} device"
    return f"{count} {device_type} device{'s' if count > 1 else ''} ({', '.join(map(str, range(count)))})"


def _local_device_index(plan: LaunchPlan, local_rank: int) -> int:
    """The device a process drives: its entry of ``--device-list``, or its local rank past the list's end."""
    return plan.device_ids[local_rank] if local_rank < len(plan.device_ids) else local_rank


def check_device_ids(plan: LaunchPlan, device_type: str, count: int, *, device_list: str, gpu: int | None,
                     env: Mapping[str, str] = os.environ) -> None:
    """Before any process starts: every device this node's processes will drive must exist (``count`` devices of
    ``device_type``), so that a wrong list is one line and not one "invalid device ordinal" traceback per rank.
    The cpu has no device ids."""
    if device_type == "cpu":
        return
    present = _present(device_type, count)
    if plan.mode == "spawn":
        ids = plan.device_ids
        if len(ids) > count:
            raise DeviceListError(f"--device-list={device_list} names {len(ids)} devices (one process each with "
                                  f"--multiprocessing-distributed) but this machine has {present}")
        missing = [index for index in ids if index >= count]
        if missing:
            raise DeviceListError(f"--device-list={device_list} names device {missing[0]} but this machine has "
                                  f"{present}")
    elif plan.mode == "torchrun":
        if plan.procs_per_node > count:
            raise DeviceListError(f"torchrun starts {plan.procs_per_node} processes on this node (--nproc_per_node) "
                                  f"but this machine has {present}")
        local = torchrun_env(env)["LOCAL_RANK"]
        index = _local_device_index(plan, local)
        if index >= count:
            raise DeviceListError(f"--device-list={device_list} gives local rank {local} device {index} but this "
                                  f"machine has {present}")
    elif not 0 <= plan.device_ids[0] < count:
        raise DeviceListError(f"--gpu={plan.device_ids[0]}: this machine has {present}")


def choose_backend(device_type: str, requested: str | None) -> str:
    """hccl / nccl / gloo by device; a requested backend must suit the device."""
    if not requested:
        return dist_backend_for(device_type)
    requested = requested.lower()
    needs = {"hccl": "npu", "nccl": "cuda"}
    if requested in needs and needs[requested] != device_type:
        raise ValueError(f"--dist-backend {requested}: only works with --device {needs[requested]} "
                         f"(this run uses {device_type}; leave --dist-backend out to get "
                         f"{dist_backend_for(device_type)})")
    return requested


def init_distributed(plan: LaunchPlan, process_index: int, backend: str, *, device_type: str = "cpu",
                     dist_url: str = "", addr: str = "", port: str = "", timeout: float = DEFAULT_DIST_TIMEOUT,
                     on_lost: Callable[[str], None] | None = None,
                     env: Mapping[str, str] = os.environ) -> DistContext:
    """Make this process's device current, then join the process group (when the plan has more than one
    process) and describe this process.

    The device comes first and nccl / hccl get it as ``device_id`` (as PyTorch recommends for NCCL): the
    communicator is then bound to this process's device from the start, not to device 0 or to whatever device
    was current when the first collective ran. Rendezvous, store operations and collectives wait at most
    ``timeout`` seconds for a peer. A :class:`PeerWatch` is started; ``on_lost(finding)`` prints the line it ends
    the process with when it finds a peer lost (see :meth:`PeerWatch.report`)."""
    if plan.mode == "torchrun":
        launched = torchrun_env(env)
        local = launched["LOCAL_RANK"]
        rank, world = launched["RANK"], launched["WORLD_SIZE"]
        device_index = _local_device_index(plan, local)
        init_method = "env://"
    else:
        local = process_index
        rank = plan.node_rank * plan.procs_per_node + process_index
        world = plan.world_size
        device_index = plan.device_ids[process_index]
        if dist_url and dist_url != "env://":
            init_method = dist_url
        else:
            os.environ["MASTER_ADDR"] = addr or os.environ.get("MASTER_ADDR", "127.0.0.1")
            os.environ["MASTER_PORT"] = str(port or os.environ.get("MASTER_PORT", "29500"))
            init_method = "env://"
    device = make_device(device_type, device_index)
    if world <= 1:
        return DistContext(device_index=device_index)
    wait = timedelta(seconds=timeout)
    if plan.mode == "torchrun":
        store, _, _ = next(dist.rendezvous("env://", timeout=wait))
    else:
        store, _, _ = next(dist.rendezvous(init_method, rank, world, timeout=wait))
    store.set_timeout(wait)
    where = (f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
             if init_method == "env://" else init_method)
    # torchrun's store outlives a restart of the workers and still holds the dead ones' addresses under the same
    # keys: each group of workers works under a prefix of its own (the other launchers start a new store)
    prefix, end_round = join_round(store, rank, world, wait) if plan.mode == "torchrun" else ("/seresnext", None)
    try:
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"{prefix}/default_pg", store),
                                world_size=world, rank=rank, timeout=wait, **_bound_to(device, backend))
    finally:
        if end_round is not None:
            end_round()
    watch = PeerWatch(dist.PrefixStore(f"{prefix}/watch", own_client(store)), rank, world, timeout=timeout,
                      me=f"node {plan.node_rank}, host {socket.gethostname()}, pid {os.getpid()}",
                      store_address=where, on_lost=on_lost,
                      store_keeper="the torchrun agent of node 0" if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                      else "rank 0")
    watch.start()
    return DistContext(rank, world, local, plan.procs_per_node, device_index, backend, watch)


def _bound_to(device: torch.device, backend: str) -> dict:
    """``init_process_group``'s ``device_id`` for a backend that drives one device per process (nccl, hccl),
    where this torch's ``init_process_group`` takes it (2.3 and later)."""
    if backend not in ("nccl", "hccl") or device.type == "cpu":
        return {}
    if "device_id" not in inspect.signature(dist.init_process_group).parameters:
        return {}
    return {"device_id": device}


def own_client(store):
    """A connection of its own to ``store`` when it is a TCP store: a thread that waits on a key (a process
    group's start-up) holds its connection, and nothing else can use it meanwhile."""
    if isinstance(store, dist.TCPStore):
        return dist.TCPStore(store.host, store.port, is_master=False, timeout=store.timeout)
    return store


def join_round(store, rank: int, world_size: int, wait: timedelta) -> tuple[str, Callable[[], None]]:
    """The key prefix every worker of this torchrun round uses, and what rank 0 calls once the group stands.

    torchrun's agents count their own restarts (``TORCHELASTIC_RESTART_COUNT``), so a node that comes back
    with a new agent counts differently from the others; the workers agree on a round instead: rank 0 draws
    the next number, and answers each worker's fresh greeting (a random nonce) with it until the process group
    stands, so that a greeting left by a dead worker of an earlier round is never what a new worker waits for.
    """
    rounds = dist.PrefixStore("/seresnext/rounds", store)
    if rank != 0:
        nonce = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        rounds.set(f"hello/{rank}", nonce)
        rounds.wait([f"answer/{rank}/{nonce}"], wait)
        return f"/seresnext/round_{rounds.get(f'answer/{rank}/{nonce}').decode()}", lambda: None
    number = rounds.add("number", 1)
    answering = dist.PrefixStore("/seresnext/rounds", own_client(store))  # rank 0's own client waits meanwhile
    done = threading.Event()

    def answer() -> None:
        answered: dict[int, str] = {}
        while not done.is_set():
            try:
                for peer in range(1, world_size):
                    if answering.check([f"hello/{peer}"]):
                        nonce = answering.get(f"hello/{peer}").decode()
                        if answered.get(peer) != nonce:
                            answering.set(f"answer/{peer}/{nonce}", str(number))
                            answered[peer] = nonce
            except Exception:  # the store is gone: the process group's start fails on its own
                return
            done.wait(0.1)

    threading.Thread(target=answer, name="round-answer", daemon=True).start()
    return f"/seresnext/round_{number}", done.set


def shutdown(ctx: DistContext, outcome: str = "done") -> None:
    """Leave the process group; ``outcome`` (``done``, ``error`` or ``peer``: see :meth:`PeerWatch.stop`) tells
    the peers' watches how this rank ended."""
    if ctx.watch is not None:
        ctx.watch.stop(outcome)
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, ctx: DistContext, device: torch.device) -> DistributedDataParallel:
    """DDP without per-step buffer syncing (upstream's ``broadcast_buffers=False``; newer torch spells it
    ``forward_sync_buffers=False``). BatchNorm statistics are averaged per epoch by :func:`average_buffers`."""
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [ctx.device_index],
                                   **no_sync)


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``values`` over all ranks (returns the input unchanged in a single process)."""
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise maximum of ``values`` over all ranks (the input unchanged in a single process)."""
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def any_rank(flag: bool, ctx: DistContext, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a signal that reached one process)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return bool(value.item() > 0)


def agree_on_precision(precision: Precision, ctx: DistContext, device: torch.device | str = "cpu") -> Precision:
    """Every rank runs the same precision: bfloat16 chosen by a rank's own CPU probe (torchrun starts each rank
    on its own) becomes float32 everywhere when any rank's CPU lacks native bfloat16."""
    if not ctx.distributed or not precision.probed:  # probed on every rank or on none: same flags everywhere
        return precision
    if any_rank(not precision.enabled, ctx, device) and precision.enabled:
        return Precision("cpu", probed=True,
                         note="--amp: another rank's CPU has no native bfloat16, so every rank runs float32")
    return precision


@torch.no_grad()
def average_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks.

    DDP runs with ``broadcast_buffers=False`` (as upstream), so each rank's statistics drift apart; averaging
    them before validation and checkpointing makes every rank hold, evaluate and save the same model.
    """
    if not ctx.distributed:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


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


SPAWN_GRACE_SECONDS = 30
"""When one spawned worker has exited with a non-zero status, how long the others get to finish on their own
(e.g. rank 0 writing the checkpoint of an interrupted run) before they are terminated."""


def spawn_workers(fn: Callable[..., None], nprocs: int, args: Sequence) -> int:
    """Run ``fn(process_index, *args)`` in ``nprocs`` spawned processes and return an exit status.

    SIGINT/SIGTERM sent to this launcher are passed on to the workers as SIGTERM, so they can save a
    resumable checkpoint; the launcher then exits with 128 + the signal number. A worker that stops for a
    signal of its own exits with 128 + its number (all workers stop together), and that status is returned,
    so an interrupted run never exits 0. Workers print their own errors, so a failed worker gives its exit
    status here (1 for an error) without another traceback.
    """
    context = mp.start_processes(fn, args=tuple(args), nprocs=nprocs, join=False, start_method="spawn")
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        for proc in context.processes:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        grace = {"grace_period": SPAWN_GRACE_SECONDS} if "grace_period" in inspect.signature(context.join).parameters \
            else {}  # older torch terminates the others at once
        while not context.join(**grace):
            pass
        status = 0
    except mp.ProcessExitedException as exc:
        status = exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1
    except mp.ProcessRaisedException as exc:  # a worker raised past its own error handling
        print(str(exc), file=sys.stderr)
        status = 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + received[0] if received else status
