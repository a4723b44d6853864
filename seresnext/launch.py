"""How a training run's processes are laid out and started, decided before any of them starts.

Four ways to run, all ending in the same :class:`seresnext.distributed.DistContext`:

* one process (the default);
* ``--multiprocessing-distributed`` (upstream): one spawned process per ``--device-list`` entry, rendezvous at
  ``--addr``/``--port`` (or ``--dist-url``); ``--world-size`` nodes with ``--rank`` this node's index;
* ``torchrun`` (single- or multi-node), detected from its environment (``LOCAL_RANK``, ``WORLD_SIZE``, ...);
* one process per node started by hand with ``--world-size N --rank R`` (pytorch/examples style).
"""
from __future__ import annotations

import inspect
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch.multiprocessing as mp

__all__ = ["LaunchPlan", "parse_device_list", "torchrun_env", "plan_launch", "check_device_ids", "DeviceListError",
           "local_device_index", "spawn_workers", "SPAWN_GRACE_SECONDS"]


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


def local_device_index(plan: LaunchPlan, local_rank: int) -> int:
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
        index = local_device_index(plan, local)
        if index >= count:
            raise DeviceListError(f"--device-list={device_list} gives local rank {local} device {index} but this "
                                  f"machine has {present}")
    elif not 0 <= plan.device_ids[0] < count:
        raise DeviceListError(f"--gpu={plan.device_ids[0]}: this machine has {present}")


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
