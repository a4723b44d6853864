"""Process-group setup and the few collectives training needs.

Four ways to run, all ending in the same :class:`DistContext`:

* one process (the default);
* ``--multiprocessing-distributed`` (upstream): one spawned process per ``--device-list`` entry, rendezvous at
  ``--addr``/``--port`` (or ``--dist-url``); ``--world-size`` nodes with ``--rank`` this node's index;
* ``torchrun`` (single- or multi-node), detected from its environment (``LOCAL_RANK``, ``WORLD_SIZE``, ...);
* one process per node started by hand with ``--world-size N --rank R`` (pytorch/examples style).

The backend follows the device (hccl on npu, nccl on cuda, gloo on cpu) unless ``--dist-backend`` names one.
"""
from __future__ import annotations

import inspect
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .devices import Precision, dist_backend_for

__all__ = ["DistContext", "LaunchPlan", "parse_device_list", "torchrun_env", "plan_launch", "choose_backend",
           "init_distributed", "shutdown", "wrap_ddp", "all_reduce_sum", "all_reduce_max", "any_rank",
           "agree_on_precision", "average_buffers", "is_peer_failure", "spawn_workers"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global/local rank and size, the device index it drives, the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device_index: int = 0
    backend: str | None = None  # None: no process group

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


def init_distributed(plan: LaunchPlan, process_index: int, backend: str, *, dist_url: str = "",
                     addr: str = "", port: str = "", env: Mapping[str, str] = os.environ) -> DistContext:
    """Join the process group (when the plan has more than one process) and describe this process."""
    if plan.mode == "torchrun":
        launched = torchrun_env(env)
        local = launched["LOCAL_RANK"]
        rank, world = launched["RANK"], launched["WORLD_SIZE"]
        device_index = plan.device_ids[local] if local < len(plan.device_ids) else local
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
    if world <= 1:
        return DistContext(device_index=device_index)
    if plan.mode == "torchrun":
        # The agent's store outlives a worker restart and still holds the dead workers' addresses under the
        # same keys; a per-attempt prefix keeps the restarted group from reading them.
        store, _, _ = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"/seresnext/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group(backend=backend, store=store, world_size=world, rank=rank)
    else:
        dist.init_process_group(backend=backend, init_method=init_method, world_size=world, rank=rank)
    return DistContext(rank, world, local, plan.procs_per_node, device_index, backend)


def shutdown(ctx: DistContext) -> None:
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


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process died (not a bug in this one)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "gloo/transport",
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
