"""Process-group setup and the few collectives training needs.

Every way to run (one process, ``--multiprocessing-distributed``, ``torchrun``, one process per node by hand:
:mod:`seresnext.launch` lays them out) ends in the same :class:`DistContext`.

The backend follows the device (hccl on npu, nccl on cuda, gloo on cpu) unless ``--dist-backend`` names one.

The process group and its rendezvous store wait at most ``--dist-timeout`` for a peer (default
:data:`DEFAULT_DIST_TIMEOUT`, far below gloo's 30 minutes and NCCL's 10), and each rank starts a
:class:`seresnext.peer_watch.PeerWatch`, so that a lost peer ends the run within a bound.
"""
from __future__ import annotations

import inspect
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .devices import Precision, dist_backend_for, make_device
from .launch import LaunchPlan, local_device_index, torchrun_env
from .peer_watch import PeerWatch

__all__ = ["DistContext", "choose_backend", "init_distributed", "join_round", "own_client", "shutdown", "wrap_ddp",
           "all_reduce_sum", "all_reduce_max", "any_rank", "agree_on_precision", "average_buffers",
           "DEFAULT_DIST_TIMEOUT"]


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
        device_index = local_device_index(plan, local)
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
