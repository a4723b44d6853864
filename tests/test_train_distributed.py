"""Multi-process training: launch plans, backend choice, and a torchrun job that survives a killed worker."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seresnext.devices import Precision
from seresnext.distributed import DistContext, agree_on_precision, choose_backend, plan_launch
from train_utils import ROOT, TINY, load, make_image_folder, run_script


def test_launch_plans_follow_upstream_flags_and_torchrun():
    spawn = plan_launch(multiprocessing_distributed=True, device_list="3,1", world_size=2, rank=1, gpu=None,
                        env={})
    assert (spawn.mode, spawn.procs_per_node, spawn.world_size, spawn.node_rank, spawn.device_ids) == \
        ("spawn", 2, 4, 1, (1, 3))
    single = plan_launch(multiprocessing_distributed=False, device_list="0,1", world_size=-1, rank=-1, gpu=5,
                         env={})
    assert (single.mode, single.world_size, single.device_ids) == ("single", 1, (5,))
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}
    launched = plan_launch(multiprocessing_distributed=True, device_list="0,1", world_size=-1, rank=-1, gpu=None,
                           env=env)
    assert (launched.mode, launched.procs_per_node, launched.world_size) == ("torchrun", 2, 4)
    with pytest.raises(ValueError, match="--device-list"):
        plan_launch(multiprocessing_distributed=True, device_list="a,b", world_size=1, rank=0, gpu=None, env={})


def test_backend_follows_the_device_and_refuses_a_mismatch():
    assert [choose_backend(d, None) for d in ("npu", "cuda", "cpu")] == ["hccl", "nccl", "gloo"]
    assert choose_backend("cuda", "gloo") == "gloo"
    with pytest.raises(ValueError, match="--dist-backend hccl: only works with --device npu"):
        choose_backend("cpu", "hccl")


def _agree(rank: int, store: str, native: list[bool], results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=len(native))
    mine = Precision("cpu", torch.bfloat16, probed=True) if native[rank] else Precision("cpu", probed=True)
    agreed = agree_on_precision(mine, DistContext(rank=rank, world_size=len(native), backend="gloo"))
    results[rank] = (str(agreed.dtype), agreed.note)
    dist.destroy_process_group()


@pytest.mark.parametrize("native", [[True, False], [True, True]])
def test_ranks_agree_on_float32_when_any_cpu_lacks_native_bfloat16(tmp_path, native):
    results = mp.Manager().dict()
    mp.spawn(_agree, args=(str(tmp_path / "store"), native, results), nprocs=2)
    expected = "torch.bfloat16" if all(native) else "None"
    assert [results[r][0] for r in range(2)] == [expected, expected]
    if not all(native):
        assert results[0][1] == "--amp: another rank's CPU has no native bfloat16, so every rank runs float32"


def _accumulate_under_ddp(rank: int, store: str, results) -> None:
    """Two optimizer steps of 3 micro-batches each under DDP, counting the gradient all-reduces."""
    from torch import nn
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from seresnext.engine import Printer, TrainConfig, train_one_epoch

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    ctx = DistContext(rank=rank, world_size=2, local_rank=rank, local_world_size=2, backend="gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    ddp = DistributedDataParallel(model)
    calls = []

    def counting_hook(process_group, bucket):
        calls.append(bucket.index())
        return allreduce_hook(process_group, bucket)

    ddp.register_comm_hook(None, counting_hook)
    gen = torch.Generator().manual_seed(rank)
    loader = [(torch.randn(2, 3, 8, 8, generator=gen), torch.randint(0, 5, (2,), generator=gen), [])
              for _ in range(6)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train_one_epoch(ddp, nn.CrossEntropyLoss(), optimizer, loader, torch.device("cpu"), 0,
                             precision=Precision("cpu"), scaler=Precision("cpu").make_scaler(),
                             lr_at=lambda e, s: 0.1, ctx=ctx, config=TrainConfig(print_freq=10, accum_steps=3),
                             printer=Printer(ctx), split_size=100)
    results[rank] = (result.steps, result.images, len(calls), [p.detach().clone() for p in model.parameters()])
    dist.destroy_process_group()


def test_ddp_all_reduces_gradients_only_on_the_last_micro_batch_of_a_step(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_accumulate_under_ddp, args=(str(tmp_path / "store"), results), nprocs=2)
    (steps, images, reduces, weights), (_, _, _, other) = results[0], results[1]
    assert (steps, images) == (2, 24)  # 2 ranks x 2 steps x 3 micro-batches x 2 images
    assert reduces == 2  # one all-reduce (a single bucket) per optimizer step, not one per micro-batch
    assert all(torch.equal(a, b) for a, b in zip(weights, other))  # the ranks stay in step


def test_torchrun_job_with_a_killed_worker_restarts_and_finishes(tmp_path):
    data = make_image_folder(tmp_path / "d", classes=4, train=4, val=3)
    out = tmp_path / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = run_script([torchrun, "--standalone", "--nproc_per_node", 2, "--max-restarts", 1, "main.py",
                         "--data_path", data, "--output-dir", out, "--epochs", 2, "--auto-resume", *TINY],
                        env={"SERESNEXT_TEST_KILL_AT_STEP": "1:2", "OMP_NUM_THREADS": "1"}, timeout=400)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "rank 1 SIGKILLs itself at step 2" in log
    assert f"=> loaded checkpoint '{out / 'checkpoint.pth.tar'}' (epoch 1)" in log
    ckpt = load(out / "checkpoint.pth.tar")
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 4)
    assert "over 12 images (2 process(es)" in log
    assert "Traceback" not in log.split("=> loaded checkpoint")[1]
    assert os.path.isfile(out / "train_curves.png")


def spawned_workers(launcher: int) -> list[int]:
    """The process ids of the workers ``--multiprocessing-distributed`` started, in rank order."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return sorted(int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes())


def test_spawned_run_with_one_worker_signalled_saves_and_exits_non_zero(tmp_path):
    """A SIGTERM to one worker only (a scheduler, the OOM killer's warning): all ranks stop together, rank 0
    saves a resumable checkpoint, and the launcher exits 143, as a 1-process run does."""
    data = make_image_folder(tmp_path / "d", classes=4, train=4, val=3)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "main.py", "--data_path", data, "--output-dir", tmp_path / "out", "--epochs", 3, *TINY,
           "--multiprocessing-distributed", "--device-list", "0,1", "--world-size", 1, "--rank", 0,
           "--addr", "127.0.0.1", "--port", port]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Epoch: [0][0/2]"):
            os.kill(spawned_workers(proc.pid)[-1], signal.SIGTERM)
            break
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=300) == 143, out[-3000:]
    assert "=> interrupted by a signal on another rank: saved a resumable checkpoint" in out
    assert "Traceback" not in out and "Final" not in out
    ckpt = load(tmp_path / "out" / "checkpoint.pth.tar")
    assert 1 <= ckpt["global_step"] < 6
