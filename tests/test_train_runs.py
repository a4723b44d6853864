"""main.py end to end on tiny CPU runs: checkpoints, exact resume, faults (NaN, unreadable images, signals),
fine-tuning, evaluation, logs."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from seresnext.devices import probe_cpu_bfloat16
from seresnext.memory import gib
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


def test_pretrained_fine_tunes_a_fresh_head_on_a_backbone_frozen_with_its_batchnorm_statistics(
        dataset, straight, tmp_path, capsys):
    weights = straight / "model_best.pth.tar"
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 1, "--stop-step-num", 1,
                     "--pretrained", weights, *TINY]) == 0
    assert "new last_linear (4 classes), backbone frozen (weights and BatchNorm statistics)" in capsys.readouterr().out
    before, after = load(weights)["state_dict"], load(tmp_path / "checkpoint.pth.tar")["state_dict"]
    changed = same_weights(after, before)
    assert "last_linear.weight" in changed
    assert all(k.startswith("last_linear.") for k in changed), changed  # running_mean/var, num_batches too


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


def main_errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_a_new_run_refuses_a_folder_that_holds_an_earlier_runs_checkpoints(dataset, straight, tmp_path, capsys,
                                                                           monkeypatch):
    files = [straight / "checkpoint.pth.tar", straight / "model_best.pth.tar"]
    stamps = [p.stat().st_mtime_ns for p in files]
    assert run_main(["--data_path", dataset, "--output-dir", straight, "--epochs", 1, *TINY]) == 1
    captured = capsys.readouterr()
    assert main_errors(captured.err) == [
        f"main.py: error: --output-dir {straight} already holds checkpoint.pth.tar and model_best.pth.tar of an "
        f"earlier run; continue that run with --auto-resume (or --resume FILE), start a new one over it with "
        f"--overwrite, or choose another --output-dir"]
    assert "Epoch: [" not in captured.out and [p.stat().st_mtime_ns for p in files] == stamps
    # upstream's defaults: --pretrained reads ./model_best.pth.tar and the checkpoints go to . as well
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_best.pth.tar").symlink_to(straight / "model_best.pth.tar")
    assert run_main(["--data_path", dataset, "--pretrained", *TINY]) == 1
    assert "--output-dir . already holds model_best.pth.tar of an earlier run" in capsys.readouterr().err
    # --overwrite starts the new run, whose first validation replaces model_best whatever its top-1
    assert run_main(["--data_path", dataset, "--pretrained", "--overwrite", "--epochs", 1, "--stop-step-num", 1,
                     *TINY]) == 0
    best = tmp_path / "model_best.pth.tar"
    assert not best.is_symlink() and load(best)["args"]["overwrite"] is True
    assert (straight / "model_best.pth.tar").stat().st_mtime_ns == stamps[1]


def test_pretrained_with_evaluate_scores_the_files_own_classifier(dataset, straight, tmp_path, capsys):
    best = straight / "model_best.pth.tar"
    assert run_main(["--data_path", dataset, "--resume", best, "--evaluate", *TINY]) == 0

    def figures(out: str) -> list[str]:
        return [line for line in out.splitlines() if "[AVG-ACC]" in line or "validation loss" in line]
    by_resume = figures(capsys.readouterr().out)
    assert run_main(["--data_path", dataset, "--pretrained", best, "--evaluate", *TINY]) == 0
    out = capsys.readouterr().out
    assert f"=> evaluating '{best}' as it is (last_linear included)" in out and "fine-tuning" not in out
    assert figures(out) == by_resume and len(by_resume) == 2
    assert run_main(["--data_path", dataset, "--pretrained", best, "--evaluate", "--num-classes", 5, *TINY]) == 1
    err = main_errors(capsys.readouterr().err)
    assert len(err) == 1 and "mis-shaped keys: last_linear.weight (file (4, 2048), model (5, 2048))" in err[0]
    assert err[0].endswith("--pretrained with --evaluate scores the file's own last_linear, so its classes must be "
                           "the 5 of this run")


def test_an_output_dir_that_cannot_be_written_fails_before_any_work(dataset, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert run_main(["--data_path", dataset, "--output-dir", blocker / "out", "--epochs", 1, *TINY]) == 1
    captured = capsys.readouterr()
    assert main_errors(captured.err) == [f"main.py: error: --output-dir {blocker / 'out'}: cannot write there "
                                         f"(Not a directory)"]
    assert "Use CPU" not in captured.out


def test_a_checkpoint_write_failing_mid_run_stops_it_with_one_line_and_keeps_the_last_good_one(
        dataset, tmp_path, capsys, monkeypatch):
    import errno

    from seresnext import checkpoint
    real_write, calls = checkpoint.atomic_write, []

    def disk_full_after_epoch_0(path, data, **kwargs):  # epoch 0 writes model_best and checkpoint
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_write", disk_full_after_epoch_0)
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 4, *TINY]) == 1
    captured = capsys.readouterr()
    err = main_errors(captured.err)
    assert len(err) == 1 and re.fullmatch(rf"main.py: error: {tmp_path}/(model_best|checkpoint)\.pth\.tar: cannot "
                                          rf"write \(No space left on device\)", err[0]), err
    # epoch 1's write failed: the run stops at the latest when epoch 2's checkpoint is due (the writer runs at
    # the lowest CPU priority, so the failure may surface only then)
    assert "Epoch: [3]" not in captured.out
    ckpt = load(tmp_path / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2


def test_steps_skipped_by_the_float16_loss_scaler_are_counted_in_the_summary_and_the_log(dataset, tmp_path, capsys):
    """float16 autocast on cpu (slow, so one step at 16 px) with a static loss scale that overflows."""
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 1, "--stop-step-num", 1,
                     "--amp-dtype", "float16", "--loss-scale-value", 2.0 ** 100, *TINY, "--image-size", 16,
                     "--val-resize-size", 16]) == 0
    assert "0 non-finite step(s), 1 step(s) skipped by the loss scaler" in capsys.readouterr().out
    record = json.loads((tmp_path / "train_log.jsonl").read_text())
    assert (record["skipped_steps"], record["nonfinite_steps"]) == (1, 0)


@pytest.fixture(scope="module")
def wide_val(tmp_path_factory):
    """64 val images: 8 validation batches of 8, time enough to signal a run in the middle of them."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "w", classes=4, train=4, val=16)


def test_sigterm_during_validation_stops_it_and_the_checkpoint_resumes_at_the_validation(wide_val, tmp_path,
                                                                                          capsys):
    cmd = [sys.executable, "main.py", "--data_path", wide_val, "--output-dir", tmp_path / "cut", "--epochs", 1,
           *TINY]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Test: [0/8]"):
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 143, out + proc.stderr.read()
    assert "Test: [7/8]" not in out and "[AVG-ACC]" not in out and "=> validation stopped by a signal after" in out
    assert "(epoch 0, step 2, its validation still to run); continue with --resume or --auto-resume" in out
    ckpt = load(tmp_path / "cut" / "checkpoint.pth.tar")
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["global_step"]) == (0, 2, 2)

    assert run_main(["--data_path", wide_val, "--output-dir", tmp_path / "cut", "--epochs", 1, "--auto-resume",
                     *TINY]) == 0
    resumed = capsys.readouterr().out.split("=> loaded checkpoint")[1]
    assert "Epoch: [0][" not in resumed and "FPS@all" not in resumed and "[AVG-ACC]" in resumed
    assert run_main(["--data_path", wide_val, "--output-dir", tmp_path / "straight", "--epochs", 1, *TINY]) == 0
    for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
        assert same_weights(load(tmp_path / "cut" / name)["state_dict"],
                            load(tmp_path / "straight" / name)["state_dict"]) == []
    logs = [json.loads((tmp_path / run / "train_log.jsonl").read_text()) for run in ("cut", "straight")]
    assert [(r["epoch"], r["val_top1"], r["val_loss"]) for r in logs][0] == \
        [(r["epoch"], r["val_top1"], r["val_loss"]) for r in logs][1]


def test_temporaries_of_killed_checkpoint_writes_are_removed_at_start(dataset, tmp_path, capsys):
    stale = [tmp_path / ".checkpoint.pth.tar.k2j4h5l1.tmp", tmp_path / ".model_best.pth.tar.abc_1234.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".other.pth.tar.abc.tmp", tmp_path / ".checkpoint.pth.tar"]
    for path in stale + kept:
        path.write_bytes(b"x" * 1000)
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 3, "--stop-step-num", 1,
                     "--eval-freq", 5, *TINY]) == 0
    assert f"=> removed 2 temporary file(s) that interrupted checkpoint writes left in '{tmp_path}'" in \
        capsys.readouterr().out
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_resume_refuses_another_optimizer_and_applies_changed_settings_in_one_line(dataset, straight, tmp_path,
                                                                                    capsys):
    saved = straight / "checkpoint.pth.tar"  # SGD, lr 0.01, momentum 0.9, wd 1e-4, 2 of 3 epochs done
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 3, "--resume", saved,
                     "--optimizer", "adamw", *TINY]) == 1
    err = main_errors(capsys.readouterr().err)
    assert err == [f"main.py: error: {saved}: trained with --optimizer sgd, so it cannot be resumed with --optimizer "
                   f"adamw (the optimizer states differ); resume with --optimizer sgd, or start a new run "
                   f"(--overwrite or another --output-dir)"]
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 3, "--resume", saved,
                     "--stop-step-num", 1, *TINY, "--lr", 0.02, "--wd", 5e-4, "--momentum", 0.8]) == 0
    assert ("=> resuming with changed settings, applied from here on: --lr 0.02 (checkpoint: 0.01), --wd 0.0005 "
            "(checkpoint: 0.0001), --momentum 0.8 (checkpoint: 0.9)") in capsys.readouterr().out
    group = load(tmp_path / "checkpoint.pth.tar")["optimizer"]["param_groups"][0]
    assert (group["weight_decay"], group["momentum"]) == (5e-4, 0.8)


def test_accumulation_counts_optimizer_steps_and_resumes_exactly_at_their_boundaries(dataset, tmp_path, capsys):
    """-b 4 --accum-steps 2: 16 images are 4 micro-batches, 2 optimizer steps of 8 images per epoch; the schedule,
    --stop-step-num, the checkpoint's step counts and the logged batch size all count optimizer steps."""
    flags = ["--data_path", dataset, "--epochs", 2, *TINY, "-b", 4, "--accum-steps", 2]
    assert run_main([*flags, "--output-dir", tmp_path / "straight"]) == 0
    out = capsys.readouterr().out
    assert "=> batch size 8 per optimizer step: 1 process(es) x 4 images x 2 accumulated batch(es) (-b 4, " \
           "--accum-steps 2)" in out
    assert [line.split("\t")[0] for line in out.splitlines() if line.startswith("Epoch: [0]")] == \
        ["Epoch: [0][0/2]", "Epoch: [0][1/2]"]
    assert load(tmp_path / "straight" / "checkpoint.pth.tar")["global_step"] == 4
    records = [json.loads(r) for r in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    assert [(r["batch_size"], r["steps"]) for r in records] == [(8, 2), (8, 2)]
    # the memory check's estimate before the run, the real peak after each epoch (this test process's own)
    assert re.search(r"^=> memory: a training step at -b 4 \(4 images of 32 px per process, float32, NCHW\) needs "
                     r"about [\d.]+ GiB; [\d.]+ GiB is available per process", out, re.M)
    assert f"| peak memory {gib(records[1]['peak_memory_bytes'])}" in out
    assert records[1]["lr"] == pytest.approx(0.005)  # the cosine of upstream's per-epoch schedule, as without
    # 3 optimizer steps (6 micro-batches), then the rest: the same weights as the straight run
    assert run_main([*flags, "--output-dir", tmp_path / "resumed", "--stop-step-num", 3]) == 0
    assert "=> stopped after --stop-step-num 3 steps" in capsys.readouterr().out
    ckpt = load(tmp_path / "resumed" / "checkpoint.pth.tar")
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["global_step"]) == (1, 1, 3)
    assert run_main([*flags, "--output-dir", tmp_path / "resumed", "--auto-resume"]) == 0
    assert "Epoch: [1][1/2]" in capsys.readouterr().out.split("=> loaded checkpoint")[1]
    assert same_weights(load(tmp_path / "resumed" / "checkpoint.pth.tar")["state_dict"],
                        load(tmp_path / "straight" / "checkpoint.pth.tar")["state_dict"]) == []


def test_accumulation_larger_than_an_epoch_makes_one_step_of_every_batch(dataset, tmp_path, capsys):
    assert run_main(["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 1, *TINY, "-b", 4,
                     "--accum-steps", 8]) == 0
    out = capsys.readouterr().out
    assert "=> --accum-steps 8: an epoch holds only 4 batch(es) of 4 per process, so each optimizer step " \
           "accumulates 4" in out
    assert "=> batch size 16 per optimizer step" in out and "Epoch: [0][0/1]" in out
    assert load(tmp_path / "checkpoint.pth.tar")["global_step"] == 1


def test_resume_with_other_images_per_step_goes_on_after_the_images_already_trained_on(dataset, tmp_path, capsys):
    """Stopped after 1 step of 8 images, resumed at -b 4 (what an out-of-memory error's advice may lead to): the
    epoch's other 8 images make its last 2 steps of 4, numbered 2 and 3 of 4, instead of restarting at image 4."""
    flags = ["--data_path", dataset, "--output-dir", tmp_path, "--epochs", 1, *TINY]
    assert run_main([*flags, "--stop-step-num", 1]) == 0
    ckpt = load(tmp_path / "checkpoint.pth.tar")
    assert (ckpt["epoch_step"], ckpt["epoch_images"], ckpt["images_per_step"]) == (1, 8, 8)
    capsys.readouterr()
    assert run_main([*flags, "-b", 4, "--auto-resume"]) == 0
    out = capsys.readouterr().out
    assert ("=> the checkpoint stopped epoch 0 after 8 images per process at 8 per optimizer step; at 4 per step "
            "now (-b x --accum-steps, per process) the epoch goes on after those images with 2 step(s)") in out
    assert [line.split("\t")[0] for line in out.splitlines() if line.startswith("Epoch: [0]")] == \
        ["Epoch: [0][2/4]", "Epoch: [0][3/4]"]
    ckpt = load(tmp_path / "checkpoint.pth.tar")
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["global_step"]) == (1, 0, 3)


def test_sigkill_after_a_mid_epoch_checkpoint_loses_at_most_n_steps_and_auto_resume_matches_a_straight_run(
        tmp_path, capsys):
    """--checkpoint-steps 3 in a 6-step epoch; the process SIGKILLs itself before step 6 (5 done, the
    checkpoint after step 3 on disk): the resumed run starts at step 3 (2 steps lost) and ends with the
    weights of an uninterrupted run."""
    data = make_image_folder(tmp_path / "d", classes=4, train=12, val=3)
    flags = ["--data_path", data, "--epochs", 1, *TINY]
    assert run_main([*flags, "--output-dir", tmp_path / "straight"]) == 0
    out = tmp_path / "out"
    cmd = [sys.executable, "main.py", *flags, "--output-dir", out, "--checkpoint-steps", 3]
    killed = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "SERESNEXT_TEST_KILL_AT_STEP": "0:5"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert (f"=> mid-epoch checkpoint (epoch 0, step 3 of 6, global step 3): writing '{out / 'checkpoint.pth.tar'}' "
            f"in the background") in killed.stdout
    assert "Epoch: [0][4/6]" in killed.stdout and "FPS@all" not in killed.stdout  # killed mid-epoch, 5 steps done
    ckpt = load(out / "checkpoint.pth.tar")
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["epoch_images"], ckpt["global_step"]) == (0, 3, 24, 3)
    capsys.readouterr()
    assert run_main([*flags, "--output-dir", out, "--auto-resume"]) == 0
    resumed = capsys.readouterr().out.split("=> loaded checkpoint")[1]
    assert "=> resuming epoch 0 at step 3 of 6 (global step 3)" in resumed
    assert re.findall(r"^Epoch: \[0\]\[(\d)/6\]", resumed, re.M) == ["3", "4", "5"]  # 2 of the 5 steps done again
    assert same_weights(load(out / "checkpoint.pth.tar")["state_dict"],
                        load(tmp_path / "straight" / "checkpoint.pth.tar")["state_dict"]) == []
