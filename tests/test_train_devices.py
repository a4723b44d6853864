"""The cuda and npu paths of training, on a CPU: device setup before the process group, device lists checked
against the devices present, torch_npu imported in every worker, pinned batches, and --profile outside the FPS
window. Where the hardware is missing, torch's device calls are replaced by recorders."""
import types

import pytest
import torch
import torch.distributed as dist

from seresnext import distributed
from seresnext.distributed import LaunchPlan, init_distributed, shutdown


@pytest.mark.parametrize("device_type, backend", [("cuda", "nccl"), ("npu", "hccl"), ("cpu", "gloo")])
def test_the_device_is_set_before_the_process_group_and_nccl_or_hccl_is_bound_to_it(monkeypatch, device_type,
                                                                                     backend):
    events = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: events.append(("set_device", index)))
    if device_type == "npu":  # without torch_npu, torch has no npu device type: make_device is a recorder too
        monkeypatch.setattr(distributed, "make_device", lambda kind, index: (
            events.append(("set_device", index)), types.SimpleNamespace(type=kind, index=index))[1])

    def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1, store=None,
                           device_id=None):
        events.append(("init_process_group", backend, device_id))

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "rendezvous", lambda *args, **kwargs: iter([(dist.HashStore(), 1, 2)]))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # restored afterwards (init_distributed sets them)
    monkeypatch.setenv("MASTER_PORT", "29500")
    plan = LaunchPlan("spawn", procs_per_node=2, world_size=2, node_rank=0, device_ids=(3, 5))
    ctx = init_distributed(plan, 1, backend, device_type=device_type, timeout=60)
    try:
        assert (ctx.rank, ctx.world_size, ctx.device_index, ctx.backend) == (1, 2, 5, backend)
        if device_type == "cpu":
            assert events == [("init_process_group", "gloo", None)]
        else:
            assert events[0] == ("set_device", 5) and events[1][:2] == ("init_process_group", backend)
            assert (events[1][2].type, events[1][2].index) == (device_type, 5) and len(events) == 2
    finally:
        shutdown(ctx)
