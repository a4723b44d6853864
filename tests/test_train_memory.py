"""The memory check before a run, and out-of-memory errors during one: the probe, the estimate, what the
device has, the advice, and main.py's one-line refusals (real allocation failures under an address-space limit)."""
import re
import subprocess
import sys

import pytest
import torch

from seresnext import memory
from seresnext.devices import Precision
from seresnext.model import se_resnext50_32x4d
from train_utils import ROOT, TINY, load, make_image_folder, run_main

torch.set_num_threads(2)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return se_resnext50_32x4d(num_classes=10)


def test_the_probe_leaves_the_model_and_the_random_state_as_they_were(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.eval()
    probe = memory.probe_activations(model, CPU, 64, Precision("cpu"), channels_last=False)
    assert probe.saved_per_image > 0 and probe.largest_per_image > 0
    assert probe.saved_fixed < 10 ** 6  # float32 saves the weights themselves, which are no new memory
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert torch.equal(rng, torch.get_rng_state()) and not model.training
    assert all(p.grad is None for p in model.parameters())


def test_the_probe_measures_the_precision_and_scales_large_images_by_their_pixels(model, monkeypatch):
    fp32 = memory.probe_activations(model, CPU, 64, Precision("cpu"), channels_last=True)
    bf16 = memory.probe_activations(model, CPU, 64, Precision("cpu", torch.bfloat16), channels_last=True)
    assert 0.45 < bf16.saved_per_image / fp32.saved_per_image < 0.55  # bfloat16 activations: half the bytes
    monkeypatch.setattr(memory, "PROBE_MAX_SIZE", 32)  # 64 px is probed at 32 and scaled by 4
    scaled = memory.probe_activations(model, CPU, 64, Precision("cpu"), channels_last=True)
    assert scaled.saved_per_image == pytest.approx(fp32.saved_per_image, rel=0.05)
    assert scaled.largest_per_image == pytest.approx(fp32.largest_per_image, rel=0.05)


def test_a_frozen_backbone_keeps_almost_nothing_for_the_backward_pass(model):
    trained = memory.probe_activations(model, CPU, 64, Precision("cpu"), channels_last=False)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("last_linear.")
    try:
        frozen = memory.probe_activations(model, CPU, 64, Precision("cpu"), channels_last=False)
    finally:
        for param in model.parameters():
            param.requires_grad = True
    assert frozen.saved_per_image < trained.saved_per_image / 100
    assert frozen.largest_per_image == trained.largest_per_image  # evaluation needs the same


def _shape(**changes) -> memory.RunShape:
    values = dict(batch=8, image_size=64, eval_size=64, workers=0, optimizer_states=1, distributed=False)
    return memory.RunShape(**{**values, **changes})


def test_the_estimate_grows_with_the_batch_and_counts_optimizer_state_ddp_buckets_and_checkpoints(model):
    trainable = sum(p.numel() * 4 for p in model.parameters())
    estimate = lambda **changes: memory.estimate_step_memory(  # noqa: E731
        model, CPU, Precision("cpu"), _shape(**changes), held=10 ** 9)
    sgd = estimate()
    assert sgd.train_bytes(16) - sgd.train_bytes(8) == 8 * sgd.train_per_image > 0
    assert sgd.train_bytes(8) > sgd.eval_bytes(8) > 10 ** 9 and sgd.peak(8) == sgd.train_bytes(8)
    # AdamW keeps two tensors per parameter (its checkpoint copies grow too); DDP its own gradient buckets
    assert estimate(optimizer_states=2).train_fixed - sgd.train_fixed == 3 * trainable
    assert estimate(distributed=True).train_fixed - sgd.train_fixed == trainable
    assert estimate(workers=2).train_fixed - sgd.train_fixed == 2 * memory.WORKER_BYTES
    evaluation = estimate(evaluate_only=True)
    assert evaluation.peak(8) == evaluation.eval_bytes(8) < sgd.eval_bytes(8)
    limit = sgd.train_bytes(40)
    assert sgd.largest_batch(limit) == 40 and sgd.largest_batch(limit - 1) == 39 and sgd.largest_batch(0) == 0


@pytest.mark.parametrize("args, expected", [
    ((256, 1, 1, 96), "-b 64 --accum-steps 4 keeps the 256 images per optimizer step"),
    ((1024, 1, 8, 20), "-b 128 --accum-steps 8 keeps the 1024 images per optimizer step"),  # -b is per node
    ((256, 2, 1, 100), "-b 64 --accum-steps 8 keeps the 512 images per optimizer step"),
    ((251, 1, 1, 100), "-b 83 --accum-steps 3 makes 249 images per optimizer step (the closest to 251)"),
    ((256, 1, 1, 0), "not even -b 1 (1 image per process) fits: use a smaller --image-size, --amp, or a device "
                     "with more memory"),
])
def test_the_advice_keeps_the_images_per_optimizer_step(args, expected):
    assert memory.batch_advice(*args) == expected


def test_cgroup_limits_count_at_every_level(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "memory.max").write_text(f"{8 * memory.GIB}\n")
    (tmp_path / "a" / "memory.current").write_text(f"{6 * memory.GIB}\n")
    (tmp_path / "a" / "b" / "memory.max").write_text("max\n")
    (tmp_path / "a" / "b" / "memory.current").write_text(f"{5 * memory.GIB}\n")
    (tmp_path / "cgroup").write_text("0::/a/b\n")
    assert memory.cgroup_free(tmp_path, tmp_path / "cgroup") == 2 * memory.GIB
    (tmp_path / "memory" / "x").mkdir(parents=True)
    (tmp_path / "memory" / "x" / "memory.limit_in_bytes").write_text(f"{4 * memory.GIB}\n")
    (tmp_path / "memory" / "x" / "memory.usage_in_bytes").write_text(f"{3 * memory.GIB}\n")
    (tmp_path / "cgroup").write_text("5:cpu,memory:/x\n")
    assert memory.cgroup_free(tmp_path, tmp_path / "cgroup") == memory.GIB
    (tmp_path / "cgroup").write_text("0::/nowhere\n")
    assert memory.cgroup_free(tmp_path, tmp_path / "cgroup") is None


def test_available_memory_on_a_cpu_is_shared_by_the_nodes_processes():
    alone, shared = memory.available_memory(CPU, 1), memory.available_memory(CPU, 4)
    assert alone.held > 0 and alone.free > 0 and alone.total == alone.held + alone.free
    assert shared.free == pytest.approx(alone.free / 4, rel=0.2) and shared.source.endswith("/ 4 processes")


@pytest.mark.parametrize("error, expected", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 822083584 bytes. Error code "
                  "12 (Cannot allocate memory)"), True),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("NPU out of memory. Tried to allocate 1.00 GiB"), True),
    (MemoryError(), True),
    (RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_errors_are_told_from_bugs(error, expected):
    assert memory.is_out_of_memory(error) is expected
    if expected:
        with pytest.raises(memory.NotEnoughMemoryError, match=r"^out of memory during training \(.+\); try -b 4$"):
            with memory.explain_out_of_memory("try -b 4", "during training"):
                raise error


# --------------------------------------------------------------------------------------------- main.py ---

def refusal(err: str) -> re.Match:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    match = re.fullmatch(r"main\.py: error: not enough memory: (an evaluation|a training) step at -b (\d+) \((\d+) "
                         r"images of (\d+) px per process, (\w+), (NCHW|channels-last)\) needs about ([\d.]+) GiB, "
                         r"but ([\d.]+) GiB is available per process \((.+); the check keeps 10% of it free\); the "
                         r"largest -b that fits is (\d+): -b (\d+) --accum-steps (\d+) keeps the (\d+) images per "
                         r"optimizer step; or pass --skip-memory-check to start anyway", lines[0])
    assert match, lines[0]
    return match


def test_a_run_that_cannot_fit_is_refused_before_it_starts_with_the_flags_that_fit(tmp_path, capsys):
    status = run_main(["--synthetic", "--device", "cpu", "-b", 2 ** 22, "--accum-steps", 2, "--image-size", 64,
                       "-j", 0, "--output-dir", tmp_path])
    captured = capsys.readouterr()
    match = refusal(captured.err)
    assert status == 1 and "Epoch: [" not in captured.out and list(tmp_path.iterdir()) == []
    kind, batch, per_process, size, dtype, layout, need, have, source, largest, advised, accum, images = \
        match.groups()
    assert (kind, batch, per_process, size, dtype, layout) == ("a training", "4194304", "4194304", "64", "float32",
                                                               "NCHW")
    assert float(need) > float(have) and source.startswith(("MemAvailable", "cgroup limit", "address-space"))
    assert int(images) == 2 ** 23 == int(advised) * int(accum) and int(advised) <= int(largest)
    assert run_main(["--synthetic", "--device", "cpu", "-b", 2 ** 22, "--image-size", 64, "--evaluate", "-j", 0]) == 1
    assert refusal(capsys.readouterr().err).group(1) == "an evaluation"


# main.py under an address-space limit (ulimit -v) a few GiB above what the interpreter holds after importing torch
LIMITED = """import resource, sys
def vm_size():
    for line in open('/proc/self/status'):
        if line.startswith('VmSize:'):
            return int(line.split()[1]) * 1024
import main
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + int(float(sys.argv[1]) * 2 ** 30), resource.RLIM_INFINITY))
sys.exit(main.run(sys.argv[2:]))
"""


def run_limited(gib: float, argv: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMITED, str(gib), *[str(a) for a in argv]], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_the_issues_run_under_an_address_space_limit_is_refused_with_what_fits(tmp_path):
    """`main.py --synthetic -b 512 --image-size 224` under a limit failed after start-up with the allocator's
    traceback; now it is refused before the first step."""
    proc = run_limited(3, ["--synthetic", "--device", "cpu", "-b", 512, "--image-size", 224, "-j", 0,
                           "--output-dir", tmp_path])
    assert proc.returncode == 1, proc.stderr
    match = refusal(proc.stderr)
    assert match.group(9) == "address-space limit (ulimit -v)"
    assert int(match.group(13)) == 512 and int(match.group(11)) <= int(match.group(10)) < 512
    assert "Epoch: [" not in proc.stdout and list(tmp_path.iterdir()) == []


def test_out_of_memory_during_training_is_one_line_and_the_last_checkpoint_stays_intact(tmp_path):
    """Epoch 0 trains at 16 px and writes its checkpoint; epoch 1 at 448 px runs out of the address space. The
    memory check would have refused the run (it estimates the largest size), so it is skipped."""
    data = make_image_folder(tmp_path / "d", classes=4, train=4, val=3)
    flags = ["--data_path", data, "--output-dir", tmp_path / "out", "--epochs", 2, *TINY,
             "--image-size", 448, "--progressive-sizes", "16:1", "--val-resize-size", 16, "--val-crop-size", 16]
    refused = run_limited(2.5, flags)
    assert refused.returncode == 1 and refusal(refused.stderr).group(4) == "448"
    assert not (tmp_path / "out" / "checkpoint.pth.tar").exists()
    proc = run_limited(2.5, [*flags, "--skip-memory-check"])
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    assert "=> memory check skipped (--skip-memory-check)" in proc.stdout and "Epoch: [1]" not in proc.stdout
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(rf"main\.py: error: out of memory during training \(.*(can't allocate memory|Cannot allocate "
                        rf"memory).*\); use a smaller batch: -b 4 --accum-steps 2 keeps the 8 images per optimizer "
                        rf"step; the last checkpoint written in {tmp_path / 'out'} is intact \(continue from it with "
                        rf"--auto-resume\)", err[0]), err[0]
    checkpoint = load(tmp_path / "out" / "checkpoint.pth.tar")
    assert (checkpoint["epoch"], checkpoint["epoch_step"], checkpoint["global_step"]) == (1, 0, 2)
