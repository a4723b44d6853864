"""Multi-process training: launch plans, backend choice, and a torchrun job that survives a killed worker."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seresnext.devices import Precision
from seresnext.distributed import DistContext, agree_on_precision, choose_backend
from seresnext.launch import plan_launch
from seresnext.peer_watch import PeerWatch
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

    from seresnext.engine import EpochPlan, Printer, Runtime, TrainConfig, TrainParts, train_one_epoch

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
    result = train_one_epoch(TrainParts(ddp, nn.CrossEntropyLoss(), optimizer, Precision("cpu").make_scaler(),
                                        lambda e, s: 0.1), loader, EpochPlan(0, split_size=100),
                             Runtime(torch.device("cpu"), Precision("cpu"), ctx, Printer(ctx)),
                             TrainConfig(print_freq=10, accum_steps=3))
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_line(paths: list[Path], prefix: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until a line starting with ``prefix`` appears in one of the output files (the job must still run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(line.startswith(prefix) for path in paths if path.exists() for line in path.read_text().splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no line {prefix!r} in {[p.read_text()[-2000:] for p in paths if p.exists()]}")


def signal_node(agent: subprocess.Popen, signum: int) -> None:
    """``signum`` to a whole "node": the torchrun agent's process group and its workers, which torchrun starts in
    sessions of their own."""
    workers = [int(pid) for pid in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()]
    for group in [agent.pid, *workers]:
        os.killpg(group, signum)


def start(cmd: list, output: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=open(output, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})},
                            start_new_session=True)


LOST_LINE = re.compile(r"^main\.py: error: lost rank (\d) of 2 \(node (\d), host [^,]+, pid \d+\): (.*); stopping "
                       r"this rank too \(the last checkpoint written is intact: continue with --auto-resume once "
                       r"every node is back\)$", re.M)


def test_a_node_lost_mid_epoch_ends_the_other_within_the_timeout_and_both_restarted_finish(tmp_path):
    """Two torchrun agents (--nnodes 2, c10d rendezvous on 127.0.0.1, gloo), one process each. Node B (agent and
    worker) is SIGKILLed mid-epoch: node A's rank names the lost rank in one line and its agent exits non-zero
    well within --dist-timeout; the mid-epoch checkpoint stays loadable; both agents restarted with
    --auto-resume finish the job."""
    data = make_image_folder(tmp_path / "d", classes=4, train=24, val=3)  # 96 images: 6 steps of 2 x 8
    out = tmp_path / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    timeout = 20

    def agent(host: bool, log: Path) -> subprocess.Popen:
        return start([torchrun, "--nnodes", 2, "--nproc_per_node", 1, "--rdzv-backend", "c10d", "--rdzv-endpoint",
                      f"127.0.0.1:{port}", "--rdzv-id", "lost-node", "--rdzv-conf", f"is_host={str(host).lower()}",
                      "main.py", "--data_path", data, "--output-dir", out, "--epochs", 1, *TINY,
                      "--checkpoint-steps", 1, "--dist-timeout", timeout, "--auto-resume"], log)

    port = free_port()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    node_a, node_b = agent(True, logs[0]), agent(False, logs[1])
    try:
        wait_for_line(logs, "Epoch: [0][1/6]", node_a)
        signal_node(node_b, signal.SIGKILL)
        lost_at = time.monotonic()
        assert node_a.wait(timeout=timeout + 60) != 0
        assert time.monotonic() - lost_at < timeout + 30
    finally:
        for node in (node_a, node_b):
            if node.poll() is None:
                signal_node(node, signal.SIGKILL)
    survivor = logs[0].read_text()
    lost = LOST_LINE.findall(survivor)
    assert len(lost) == 1 and lost[0][2].startswith("it stopped answering ("), survivor[-3000:]
    ckpt = load(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 0 and 2 <= ckpt["epoch_step"] < 6  # mid-epoch, after the kill

    port = free_port()
    logs = [tmp_path / "a2.log", tmp_path / "b2.log"]
    node_a, node_b = agent(True, logs[0]), agent(False, logs[1])
    try:
        assert node_a.wait(timeout=400) == 0 and node_b.wait(timeout=60) == 0, [p.read_text()[-3000:] for p in logs]
    finally:
        for node in (node_a, node_b):
            if node.poll() is None:
                signal_node(node, signal.SIGKILL)
    resumed = "".join(path.read_text() for path in logs)
    assert f"=> resuming epoch 0 at step {ckpt['epoch_step']} of 6" in resumed
    final = load(out / "checkpoint.pth.tar")
    assert (final["epoch"], final["epoch_step"], final["global_step"]) == (1, 0, 6)


@pytest.mark.parametrize("hung_rank", [1, 0])
def test_a_hung_peer_or_store_is_named_and_the_other_rank_ends_within_the_timeout(tmp_path, hung_rank):
    """One process per "node" (--world-size 2 --rank R). SIGSTOP freezes one of them mid-epoch, sockets open:
    nothing tells the other that it is gone but time. Rank 1 frozen: rank 0 names it; rank 0 frozen (it keeps the
    rendezvous store): rank 1 names the store. Either way the other ends with one line within the timeout."""
    data = make_image_folder(tmp_path / "d", classes=4, train=24, val=3)
    port, timeout = free_port(), 10
    logs = [tmp_path / "rank0.log", tmp_path / "rank1.log"]
    ranks = [start([sys.executable, "main.py", "--data_path", data, "--output-dir", tmp_path / "out", "--epochs", 2,
                    *TINY, "--world-size", 2, "--rank", rank, "--addr", "127.0.0.1", "--port", port,
                    "--dist-timeout", timeout], logs[rank]) for rank in (0, 1)]
    survivor = 1 - hung_rank
    try:
        wait_for_line(logs, "Epoch: [0][1/6]", ranks[0])
        os.killpg(ranks[hung_rank].pid, signal.SIGSTOP)
        hung_at = time.monotonic()
        assert ranks[survivor].wait(timeout=timeout + 60) == 1
        assert time.monotonic() - hung_at < timeout + 30
    finally:
        for proc in ranks:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    err = [line for line in logs[survivor].read_text().splitlines() if line.startswith("main.py")]
    assert len(err) == 1, logs[survivor].read_text()[-3000:]
    if hung_rank == 1:
        lost = LOST_LINE.findall(err[0])
        assert lost and lost[0][:2] == ("1", "1"), err
    else:
        assert err[0].startswith(f"main.py: error: lost the rendezvous store at 127.0.0.1:{port}: rank 0, which "
                                 f"keeps it, or its node stopped answering; stopping this rank too"), err
    assert "Traceback" not in logs[survivor].read_text()


def test_under_max_restarts_the_job_continues_when_the_lost_node_comes_back(tmp_path):
    """As above, with --max-restarts 1: node A's rank ends with the one line and A's agent waits for the node to
    come back; a new agent on node B (its restart count starts at 0 again, A's is 1) joins, and the job resumes
    from the mid-epoch checkpoint and finishes. torchrun 2.14's shared agent store cannot take a node back
    (pytorch/pytorch#135712), so the agents run with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as documented."""
    data = make_image_folder(tmp_path / "d", classes=4, train=24, val=3)
    out = tmp_path / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    port = free_port()

    def agent(host: bool, log: Path) -> subprocess.Popen:
        return start([torchrun, "--nnodes", 2, "--nproc_per_node", 1, "--max-restarts", 1, "--rdzv-backend", "c10d",
                      "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "rejoin", "--rdzv-conf",
                      f"is_host={str(host).lower()}", "main.py", "--data_path", data, "--output-dir", out,
                      "--epochs", 1, *TINY, "--checkpoint-steps", 1, "--dist-timeout", 20, "--auto-resume"], log,
                     env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})

    logs = [tmp_path / "a.log", tmp_path / "b.log", tmp_path / "b_again.log"]
    node_a, node_b = agent(True, logs[0]), agent(False, logs[1])
    agents = [node_a, node_b]
    try:
        wait_for_line(logs, "Epoch: [0][1/6]", node_a)
        signal_node(node_b, signal.SIGKILL)
        wait_for_line(logs[:1], "main.py: error: lost rank", node_a, timeout=60)
        assert node_a.poll() is None  # its agent waits for the node
        agents.append(agent(False, logs[2]))
        assert node_a.wait(timeout=400) == 0 and agents[2].wait(timeout=60) == 0, \
            [p.read_text()[-3000:] for p in logs]
    finally:
        for node in agents:
            if node.poll() is None:
                signal_node(node, signal.SIGKILL)
    assert "=> resuming epoch 0 at step" in logs[0].read_text() + logs[2].read_text()
    final = load(out / "checkpoint.pth.tar")
    assert (final["epoch"], final["epoch_step"], final["global_step"]) == (1, 0, 6)


def watches(store, timeout: float, ended: list, world: int = 2) -> list[PeerWatch]:
    """Every rank's watch on one in-process store, ending 'processes' into ``ended``."""
    return [PeerWatch(store, rank, world, timeout=timeout, me=f"node {rank}, host h, pid {100 + rank}",
                      store_address="h:1", interval=0.1, on_lost=lambda f, r=rank: ended.append((r, f)),
                      end_process=lambda status: None) for rank in range(world)]


def wait_until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_peer_watch_names_a_silent_rank_after_the_timeout_and_a_failed_one_at_once():
    ended: list = []
    rank0, rank1, rank2 = watches(dist.HashStore(), timeout=1.0, ended=ended, world=3)
    rank0.start(), rank1.start(), rank2.start()
    time.sleep(0.3)
    rank2._stop.set()  # its heartbeat stops, as in a frozen process: nothing says it left
    wait_until(lambda: len(ended) == 2)
    assert ended[0] == (0, "lost rank 2 of 3 (node 2, host h, pid 102): no heartbeat for 1 s (--dist-timeout), so "
                           "its process or node stopped")
    assert ended[1] == (1, ended[0][1])  # rank 1 watches rank 0 only, and ends with the line rank 0 published
    assert not rank0.report("again") and rank0.explain(RuntimeError("x")) == ended[0][1]

    ended.clear()
    rank0, rank1 = watches(dist.HashStore(), timeout=30.0, ended=ended)
    rank0.start(), rank1.start()
    rank1.stop("error")  # rank 1 printed its own error and left: rank 0 need not wait for the timeout
    wait_until(lambda: ended)
    assert ended == [(0, "rank 1 of 2 (node 1, host h, pid 101) stopped with an error, which its own log names")]


def test_peer_watch_explains_a_failed_collective_by_the_heartbeats():
    ended: list = []
    store = dist.HashStore()
    rank0, rank1 = watches(store, timeout=30.0, ended=ended)
    rank0.start()  # rank 1's watch never runs: its process is gone
    error = RuntimeError("[/src/gloo/transport/tcp/pair.cc:545] Read error [10.0.0.2]:944: Connection reset by peer. "
                         "This is typically caused by a remote worker hanging. GLHF!")
    assert rank0.explain(error) == ("lost rank 1 of 2 (node 1, host h, pid 101): it stopped answering (Read error "
                                    "[10.0.0.2]:944: Connection reset by peer)")
    rank0.stop("peer")
    assert store.get("left/0") == b"peer" and not ended


def test_collective_errors_of_a_lost_peer_are_told_from_bugs():
    """gloo's own timeout can fire before the heartbeat watch does (a frozen peer): its error is a lost peer too,
    so the rank ends with the one line, not a traceback."""
    from seresnext.peer_watch import is_peer_failure
    assert is_peer_failure(RuntimeError("Application timeout caused pair closure"))
    assert is_peer_failure(
        RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_peer_failure(ValueError("Connection closed by peer"))
