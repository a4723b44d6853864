"""The cuda and npu paths of training, on a CPU: device setup before the process group, device lists checked
against the devices present, torch_npu imported in every worker, pinned batches. Where the hardware is missing,
torch's device calls are replaced by recorders."""
import sys
import types

import pytest
import torch
import torch.distributed as dist

import main
from seresnext import data, devices, distributed
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


@pytest.fixture
def one_cuda_device(monkeypatch):
    """A machine with one CUDA device; nothing may be spawned or run."""
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(main, "device_count", lambda device_type: 1 if device_type == "cuda" else 0)

    def never(*args, **kwargs):
        raise AssertionError("started a process or a worker")

    monkeypatch.setattr(main, "spawn_workers", never)
    monkeypatch.setattr(main, "run_worker", never)
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("flags, env, message", [
    (["--multiprocessing-distributed"], {},
     "--device-list=0,1,2,3,4,5,6,7 names 8 devices (one process each with --multiprocessing-distributed) but this "
     "machine has 1 cuda device (0)"),
    (["--multiprocessing-distributed", "--device-list", "1"], {},
     "--device-list=1 names device 1 but this machine has 1 cuda device (0)"),
    (["--gpu", "2"], {}, "--gpu=2: this machine has 1 cuda device (0)"),
    ([], {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"},
     "torchrun starts 2 processes on this node (--nproc_per_node) but this machine has 1 cuda device (0)"),
])
def test_device_lists_beyond_the_devices_present_are_one_line_before_anything_starts(one_cuda_device, monkeypatch,
                                                                                      capsys, tmp_path, flags, env,
                                                                                      message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status = main.run(["--device", "cuda", "--synthetic", "--output-dir", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert status == 2 and err == f"main.py: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_device_lists_within_the_devices_present_start(one_cuda_device, monkeypatch, tmp_path):
    started = []
    monkeypatch.setattr(main, "spawn_workers", lambda fn, nprocs, args: started.append(nprocs) or 0)
    assert main.run(["--device", "cuda", "--synthetic", "--output-dir", str(tmp_path), "--multiprocessing-distributed",
                     "--device-list", "0"]) == 0
    assert started == [1]


FAKE_TORCH_NPU = '''
"""A stand-in for torch_npu: importing it gives torch an npu namespace, as the real one does."""
import sys
import types

import torch

EVENTS = torch.fake_npu_events


class Stop(Exception):
    pass


def set_device(index):
    EVENTS.append(f"set_device {index}")
    raise Stop("the test ends here")


EVENTS.append("imported torch_npu")
torch.npu = types.SimpleNamespace(set_device=set_device)
'''


def test_a_spawned_npu_worker_imports_torch_npu_before_it_sets_its_device(monkeypatch, tmp_path, capsys):
    """With TORCH_DEVICE_BACKEND_AUTOLOAD=0 nothing else imports torch_npu in a fresh worker process."""
    (tmp_path / "torch_npu.py").write_text(FAKE_TORCH_NPU)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    monkeypatch.setattr(torch, "npu", None, raising=False)  # restored (removed) afterwards
    monkeypatch.delattr(torch, "npu")
    monkeypatch.setattr(torch, "fake_npu_events", [], raising=False)
    args = main.get_args_parser().parse_args(["--synthetic", "--output-dir", str(tmp_path / "out")])
    args.device = "npu"
    plan = LaunchPlan("spawn", procs_per_node=1, world_size=1, node_rank=0, device_ids=(0,))
    try:
        assert main.run_worker(0, args, plan, None, devices.Precision("npu")) == 1
    finally:
        sys.modules.pop("torch_npu", None)
    assert torch.fake_npu_events == ["imported torch_npu", "set_device 0"]
    assert "the test ends here" in capsys.readouterr().err


@pytest.mark.parametrize("device_type, pinned", [("cuda", True), ("npu", True), ("cpu", False)])
def test_batches_are_pinned_on_every_accelerator_so_their_copies_overlap(device_type, pinned):
    assert devices.pins_memory(device_type) is pinned
    loader = data.make_loader(list(range(4)), range(4), 2, 0, train=False, pin_memory=devices.pins_memory(device_type))
    assert loader.pin_memory is pinned  # what main.py's train and val loaders are given
