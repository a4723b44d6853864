"""main.py end to end on tiny CPU runs: checkpoints, exact resume, faults (NaN, unreadable images, signals),
fine-tuning, evaluation, logs."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from seresnext.devices import probe_cpu_bfloat16
from train_utils import ROOT, TINY, corrupt, load, make_image_folder, run_main, same_weights

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "d", classes=4, train=4, val=3)


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory):
    """Two epochs in one go: the reference every resumed run must match exactly."""
    out = tmp_path_factory.mktemp("straight")
    assert run_main(["--data_path", dataset, "--output-dir", out, "--epochs", 2, *TINY]) == 0
    return out


def test_checkpoint_keeps_upstream_keys_and_loads_weights_only(straight, capsys):
    ckpt = load(straight / "checkpoint.pth.tar")
    assert {"epoch", "state_dict", "best_acc1", "optimizer", "scaler", "args", "epoch_step", "global_step",
            "classes", "class_names"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["epoch_step"] == 0 and ckpt["global_step"] == 4
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert ckpt["classes"] == [f"n{1000 + i:08d}" for i in range(4)]
    assert ckpt["class_names"][0] == "colour 0, a test class"
    assert ckpt["args"]["epochs"] == 2 and isinstance(ckpt["args"], dict)
    assert (straight / "model_best.pth.tar").is_file()
    records = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert {"lr", "train_loss", "train_top1", "train_top5", "images_per_second", "seconds", "val_top1"} <= set(
        records[0])
    assert records[0]["images_per_second"] > 0 and records[1]["lr"] == pytest.approx(0.005)
    assert (straight / "train_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_one_epoch_then_resume_gives_the_same_weights_as_two_straight(dataset, straight, tmp_path, capsys):
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 2, "--stop-step-num", 2,
                     *TINY]) == 0
    assert load(tmp_path / "checkpoint.pth.tar")["epoch"] == 1
    resume = tmp_path / "checkpoint.pth.tar"
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 2, "--resume", resume,
                     *TINY]) == 0
    out = capsys.readouterr().out
    assert f"=> loading checkpoint '{resume}'" in out and f"=> loaded checkpoint '{resume}' (epoch 1)" in out
    assert "=> Now Epoch[0]" not in out.split("=> loaded checkpoint")[1]
    resumed, reference = load(tmp_path / "checkpoint.pth.tar"), load(straight / "checkpoint.pth.tar")
    assert same_weights(resumed["state_dict"], reference["state_dict"]) == []
    assert resumed["best_acc1"] == reference["best_acc1"]
    assert [json.loads(r)["epoch"] for r in (tmp_path / "train_log.jsonl").read_text().splitlines()] == [0, 1]


def test_stop_step_num_stops_mid_epoch_and_auto_resume_continues_exactly(dataset, straight, tmp_path, capsys):
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 2, "--stop-step-num", 3,
                     "--auto-resume", *TINY]) == 0
    assert f"=> no checkpoint found at '{tmp_path}'" in capsys.readouterr().out  # a fresh start
    ckpt = load(tmp_path / "checkpoint.pth.tar")
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["global_step"]) == (1, 1, 3)
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 2, "--auto-resume",
                     *TINY]) == 0
    assert "Epoch: [1][1/2]" in capsys.readouterr().out.split("=> loaded checkpoint")[1]
    assert same_weights(load(tmp_path / "checkpoint.pth.tar")["state_dict"],
                        load(straight / "checkpoint.pth.tar")["state_dict"]) == []


def test_progressive_sizes_train_early_epochs_smaller_and_resume_keeps_the_schedule(dataset, tmp_path, capsys):
    flags = ["--data_path", dataset, "--epochs", 3, "--progressive-sizes", "16:1,24:1", *TINY]
    assert run_main([*flags, "--output-dir", tmp_path / "straight"]) == 0
    out = capsys.readouterr().out
    for epoch, size in ((0, 16), (1, 24), (2, 32)):
        assert f"=> Epoch[{epoch}] training at {size}x{size} px (--progressive-sizes)" in out
    records = (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["image_size"] for r in records] == [16, 24, 32]
    # stopped in epoch 1 (24 px), then resumed: the schedule is a function of the epoch, so nothing changes
    assert run_main([*flags, "--output-dir", tmp_path / "resumed", "--stop-step-num", 3]) == 0
    assert run_main([*flags, "--output-dir", tmp_path / "resumed", "--auto-resume"]) == 0
    assert "=> Epoch[1] training at 24x24 px" in capsys.readouterr().out.split("=> loaded checkpoint")[1]
    assert same_weights(load(tmp_path / "resumed" / "checkpoint.pth.tar")["state_dict"],
                        load(tmp_path / "straight" / "checkpoint.pth.tar")["state_dict"]) == []


def test_adamw_optimizer_trains_and_is_checkpointed(dataset, tmp_path):
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 1, "--stop-step-num", 1,
                     "--optimizer", "adamw", "--wd", 0.05, *TINY]) == 0
    state = load(tmp_path / "checkpoint.pth.tar")["optimizer"]
    assert "exp_avg" in state["state"][0] and state["param_groups"][0]["weight_decay"] == 0.05


def test_persistent_nan_stops_and_leaves_the_last_good_checkpoint(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SERESNEXT_TEST_NAN_STEPS", "2-")  # from the first step of epoch 1 on
    status = run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 3,
                       "--max-nonfinite-steps", 2, *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert "non-finite" in err[0] and "last checkpoint written is left as it was" in err[0]
    ckpt = load(tmp_path / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
                                      if v.is_floating_point())


def test_unreadable_train_image_is_skipped_counted_and_named(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d", classes=4, train=32, val=1, size=20)
    bad = corrupt(root / "train" / "n00001002" / "n00001002_7.JPEG")  # 1 of 128: under the 1% limit
    assert run_main(["--data_path", root, "--output-dir", tmp_path / "out", "--epochs", 1, *TINY,
                     "-b", 64, "--image-size", 16, "--val-resize-size", 16]) == 0
    captured = capsys.readouterr()
    assert f"unreadable train image skipped: {bad}" in captured.err
    assert "| 1 unreadable image(s) skipped" in captured.out
    assert json.loads((tmp_path / "out" / "train_log.jsonl").read_text())["skipped_images"] == 1


def test_more_than_one_percent_unreadable_stops_with_one_line(dataset, tmp_path, capsys):
    root = make_image_folder(tmp_path / "d", classes=4, train=4, val=1)
    corrupt(root / "train" / "n00001000" / "n00001000_0.JPEG")
    assert run_main(["--data_path", root, "--output-dir", tmp_path / "out", "--epochs", 1, *TINY]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("main.py")]
    assert len(err) == 1 and "train split: 1 of 16 images (6.2%) are unreadable" in err[0]


def test_pretrained_fine_tunes_a_fresh_head_on_a_frozen_backbone(dataset, straight, tmp_path, capsys):
    weights = straight / "model_best.pth.tar"
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 1, "--stop-step-num", 1,
                     "--pretrained", weights, *TINY]) == 0
    assert "new last_linear (4 classes), backbone frozen" in capsys.readouterr().out
    before, after = load(weights)["state_dict"], load(tmp_path / "checkpoint.pth.tar")["state_dict"]
    changed = same_weights(after, before)
    assert "last_linear.weight" in changed
    assert all(k.startswith("last_linear.") or "running_" in k or "num_batches" in k for k in changed)


def test_evaluate_with_resume_only_evaluates(dataset, straight, tmp_path, capsys):
    best = straight / "model_best.pth.tar"
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--resume", best, "--evaluate",
                     *TINY]) == 0
    out = capsys.readouterr().out
    assert "[npu id: 0 ] [AVG-ACC] * Acc@1" in out and "Epoch: [" not in out
    assert "=> validation loss" in out and "over 12 images" in out
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_writes_a_resumable_checkpoint_and_exits_cleanly(dataset, straight, tmp_path):
    """SIGINT to the whole process group, loader workers included, as a terminal's Ctrl-C sends it."""
    cmd = [sys.executable, "main.py", "--data_path", dataset, "--output-dir", tmp_path, "--epochs", 2, *TINY,
           "-j", 1]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Epoch: [0][0/2]"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 130, out + proc.stderr.read()
    assert "=> interrupted by SIGINT: saved a resumable checkpoint" in out and "Traceback" not in proc.stderr.read()
    ckpt = load(tmp_path / "checkpoint.pth.tar")
    assert 1 <= ckpt["global_step"] < 4  # where the signal landed: after step 1 or 2 of 4
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 2, "--auto-resume",
                     *TINY]) == 0
    assert same_weights(load(tmp_path / "checkpoint.pth.tar")["state_dict"],
                        load(straight / "checkpoint.pth.tar")["state_dict"]) == []


def test_synthetic_run_on_a_terminal_shows_a_progress_bar(tmp_path):
    """--synthetic needs no dataset; --channels-last and --amp train (bfloat16 where native); a TTY gets a
    tqdm bar."""
    import fcntl
    import pty
    import struct
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a real terminal's size
    cmd = [sys.executable, "main.py", "--synthetic", "--num-classes", 10, "--output-dir", tmp_path, "--epochs", 1,
           "--stop-step-num", 2, "--channels-last", "--amp", *TINY, "-b", 4]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=follower, stderr=follower,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    os.close(leader)
    out = b"".join(chunks).decode(errors="replace")
    assert "it/s" in out or "s/it" in out, out[-2000:]  # tqdm's rate field
    expected = "autocast bfloat16 on cpu" if probe_cpu_bfloat16().native else "float32 (--amp: this CPU has no"
    assert f"=> precision: {expected}" in out and "FPS@all" in out and "stopped after --stop-step-num 2" in out
    record = json.loads((tmp_path / "train_log.jsonl").read_text())
    assert record["steps"] == 2 and record["val_top1"] is not None
