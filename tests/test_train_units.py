"""Training building blocks that need no training run: flags, precision mapping, schedule, samplers,
data checks, checkpoint lookup."""
import math
import os
import sys
import threading
import time

import pytest
import torch

import main
from seresnext import data
from seresnext.checkpoint import (CheckpointError, CheckpointInterval, CheckpointWriter, find_latest_checkpoint,
                                  plain_data, prepare_output_dir, restore_optimizer, save_training_checkpoint)
from seresnext import devices
from seresnext.devices import BFloat16Probe, Precision, StaticGradScaler, resolve_precision
from seresnext.training_log import append_record
from seresnext.engine import cosine_lr, steady_state_window
from train_utils import corrupt, make_image_folder, python, run_main, run_script


def test_upstream_flags_keep_spelling_defaults_and_prefixes():
    args = main.get_args_parser().parse_args(["--data=/d", "--epoch=3", "--batch-size=64", "--lr=0.4", "--wd",
                                              "5e-5", "--amp", "--opt-level", "O2", "--loss-scale-value", "16"])
    assert (args.data_path, args.epochs, args.batch_size, args.lr, args.weight_decay) == ("/d", 3, 64, 0.4, 5e-5)
    assert args.amp and args.amp_dtype is None and args.opt_level == "O2" and args.loss_scale_value == "16"
    d = main.get_args_parser().parse_args([])
    assert (d.data_path, d.workers, d.epochs, d.start_epoch, d.batch_size, d.lr, d.gamma, d.momentum,
            d.weight_decay, d.seed, d.device_list, d.gpu, d.world_size, d.rank, d.dist_url, d.addr, d.port,
            d.loss_scale_value, d.print_freq, d.eval_freq, d.stop_step_num, d.resume, d.evaluate, d.profile) == \
        ("/dataset/imagenet", 4, 90, 0, 256, 0.1, 0.1, 0.9, 1e-4, None, "0,1,2,3,4,5,6,7", None, -1, -1, "", "",
         "", "1024", 10, 10, None, "", False, 0)
    assert d.output_dir == "." and not (d.channels_last or d.compile or d.auto_resume or d.synthetic)
    assert d.optimizer == "sgd" and d.min_crop_scale == 0.08 and d.label_smoothing == 0.0
    assert d.warmup_epochs == 0 and d.amp_dtype is None
    assert d.pretrained is None
    assert main.get_args_parser().parse_args(["--pretrained"]).pretrained == "./model_best.pth.tar"
    assert main.get_args_parser().parse_args(["--pretrained", "w.pth"]).pretrained == "w.pth"


def test_amp_flags_map_to_torch_amp_by_device(monkeypatch):
    monkeypatch.setattr(devices, "probe_cpu_bfloat16", lambda: BFloat16Probe(1.9))  # a CPU with native bfloat16
    cpu = resolve_precision("cpu", True, "O2", None, "16")
    assert cpu.dtype == torch.bfloat16 and not cpu.uses_scaler and not cpu.make_scaler().is_enabled()
    assert cpu.describe() == ("autocast bfloat16 on cpu, no loss scaling (--amp: native bfloat16, a bfloat16 "
                              "convolution ran 1.90x as fast as float32 here)")
    cuda = resolve_precision("cuda", True, "O2", None, "16")
    assert cuda.dtype == torch.float16 and cuda.loss_scale == 16.0
    assert resolve_precision("npu", True, "O1", None, "dynamic") == Precision("npu", torch.float16, None)
    assert resolve_precision("cuda", True, None, "bfloat16", "16") == Precision("cuda", torch.bfloat16, None)
    assert resolve_precision("cpu", False, None, "float16", "8") == Precision("cpu", torch.float16, 8.0)
    assert not resolve_precision("cuda", True, "O0").enabled and not resolve_precision("cuda", False).enabled
    with pytest.raises(ValueError, match="--loss-scale-value"):
        resolve_precision("cuda", True, "O2", None, "lots")


def test_amp_on_a_cpu_with_emulated_bfloat16_runs_float32_but_cuda_keeps_float16(monkeypatch):
    monkeypatch.setattr(devices, "probe_cpu_bfloat16", lambda: BFloat16Probe(0.4))
    cpu = resolve_precision("cpu", True, "O2", None, "16")
    assert cpu == Precision("cpu") and cpu.probed and not cpu.make_scaler().is_enabled()
    assert cpu.describe().startswith("float32 (--amp: this CPU has no native bfloat16; bfloat16 would be emulated "
                                     "and slower (a bfloat16 convolution ran 0.40x as fast as float32 here")
    assert resolve_precision("cpu", True, "O2", "bfloat16", "16") == Precision("cpu", torch.bfloat16)
    assert resolve_precision("cuda", True, "O2", None, "16") == Precision("cuda", torch.float16, 16.0)
    assert resolve_precision("cpu", True, "O0", None, "16").describe() == "float32 (AMP off)"


def test_amp_on_a_cpu_without_avx512_says_bfloat16_was_not_measured_but_missing(monkeypatch):
    """On an AVX2-only CPU (an AMD EPYC Zen 1 here) oneDNN has no bfloat16 kernels at all: the line says so
    instead of a speed ratio that was never measured."""
    monkeypatch.setattr(devices, "probe_cpu_bfloat16", lambda: BFloat16Probe(0.0))
    assert resolve_precision("cpu", True, "O2", None, "16").describe() == (
        "float32 (--amp: this CPU has no native bfloat16; bfloat16 would be emulated and slower (oneDNN has no "
        "bfloat16 kernels for this CPU: it needs AVX-512; --amp-dtype bfloat16 forces it))")


FORCED_AND_DEFAULT = ("from seresnext.devices import probe_cpu_bfloat16, resolve_precision\n"
                      "print(probe_cpu_bfloat16().speedup)\n"
                      "print(resolve_precision('cpu', True, 'O2', None, '16').describe())\n"
                      "print(resolve_precision('cpu', True, 'O2', 'bfloat16', '16').dtype)")


@pytest.mark.parametrize("isa", ["AVX512_CORE_VNNI", "AVX2"])
def test_amp_follows_what_onednn_really_runs_when_its_isa_is_capped(isa):
    """A cap below native bfloat16 (AVX512_CORE_VNNI) or below AVX-512 (AVX2): the probe measures bfloat16 as
    slower, --amp runs float32 and says why, and --amp-dtype bfloat16 still forces bfloat16."""
    result = run_script([python(), "-c", FORCED_AND_DEFAULT], env={"ONEDNN_MAX_CPU_ISA": isa}, timeout=120)
    assert result.returncode == 0, result.stderr
    speedup, described, forced = result.stdout.splitlines()
    assert float(speedup) < devices.BFLOAT16_MIN_SPEEDUP
    assert described.startswith("float32 (--amp: this CPU has no native bfloat16; bfloat16 would be emulated and "
                                "slower (")
    assert "bfloat16 convolution ran" in described or "has no bfloat16 kernels" in described
    assert forced == "torch.bfloat16"


def test_a_cpu_that_announces_native_bfloat16_gets_it_from_the_probe():
    if os.environ.get("ONEDNN_MAX_CPU_ISA") or not (torch.cpu._is_avx512_bf16_supported()
                                                   or torch.cpu._is_amx_tile_supported()):
        pytest.skip("this CPU shows neither AVX512_BF16 nor AMX to this process")
    devices.probe_cpu_bfloat16.cache_clear()
    assert devices.probe_cpu_bfloat16().native
    assert resolve_precision("cpu", True).dtype == torch.bfloat16


def test_progressive_sizes_parse_into_phases_and_refuse_bad_values(tmp_path):
    phases = data.parse_progressive_sizes("40:8, 48:4", 64)
    assert phases == ((40, 8), (48, 4))
    assert [data.train_size_at(e, 64, phases) for e in (0, 7, 8, 11, 12, 30)] == [40, 40, 48, 48, 64, 64]
    assert data.parse_progressive_sizes(None, 64) == () and data.train_size_at(3, 64, ()) == 64
    for bad in ("48", "48:x", "80:2", "48:0"):
        with pytest.raises(ValueError, match=f"--progressive-sizes {bad}: "):
            data.parse_progressive_sizes(bad, 64)
    # the crops really change size: the folder's transform and the synthetic bank follow the sampler's key
    folder = data.RobustImageFolder(make_image_folder(tmp_path / "d", classes=2, train=1, val=1) / "train",
                                    data.train_transform(32), substitute=True, seed=0,
                                    transform_at=data.train_transform)
    synthetic = data.SyntheticImages(4, 32, 2)
    for dataset in (folder, synthetic):
        assert dataset[data.SampleKey(0, 3, 16)][0].shape == (3, 16, 16)
        assert dataset[data.SampleKey(0, 3, 24)][0].shape == (3, 24, 24)


def test_persistent_train_workers_follow_the_epoch_and_size_of_each_epoch(tmp_path):
    # the train loader's workers live across epochs; what they produce must still be each epoch's own
    # augmentation at each epoch's size, the same as without workers
    root = make_image_folder(tmp_path / "d", classes=2, train=3, val=1) / "train"

    def batches(workers):
        dataset = data.RobustImageFolder(root, data.train_transform(32), substitute=True, seed=4,
                                         transform_at=data.train_transform)
        sampler = data.TrainSampler(dataset, 1, 0, seed=4)
        loader = data.make_loader(dataset, sampler, 2, workers, train=True)
        assert loader.persistent_workers == (workers > 0)
        out = []
        for epoch, size in ((0, 16), (1, 16), (2, 24)):
            sampler.set_position(epoch, size=size)
            out.append([images for images, _, _ in loader])
        return out

    with_workers, without = batches(1), batches(0)
    assert [b[0].shape[-1] for b in with_workers] == [16, 16, 24]
    assert not torch.equal(with_workers[0][0], with_workers[1][0])  # a new epoch, new crops
    for a, b in zip(with_workers, without):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_persistent_train_workers_end_with_the_training_block_even_when_it_stops_mid_epoch(tmp_path):
    # they ignore SIGTERM, so workers left to interpreter exit could hang it in multiprocessing's join
    root = make_image_folder(tmp_path / "d", classes=2, train=4, val=1) / "train"
    dataset = data.RobustImageFolder(root, data.train_transform(16), substitute=True, seed=0)
    sampler = data.TrainSampler(dataset, 1, 0, seed=0)
    loader = data.make_loader(dataset, sampler, 2, 2, train=True)
    with data.workers_stopped_after(loader):
        sampler.set_position(0)
        next(iter(loader))  # a run stopped by a signal leaves its epoch here
        workers = list(loader._iterator._workers)
        assert workers and all(w.is_alive() for w in workers)
    assert not any(w.is_alive() for w in workers)


def test_static_loss_scale_skips_nonfinite_steps_and_never_moves():
    layer = torch.nn.Linear(3, 1)
    before = layer.weight.detach().clone()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = Precision("cpu", torch.float16, 16.0).make_scaler()
    assert isinstance(scaler, StaticGradScaler)
    for bad in (True, False):
        optimizer.zero_grad()
        loss = layer(torch.ones(1, 3)).sum() * (float("inf") if bad else 1.0)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        assert scaler.get_scale() == 16.0
        assert torch.equal(layer.weight, before) == bad  # the inf step was skipped, the next one applied


def test_lr_schedule_is_upstreams_cosine_with_optional_warmup():
    for epoch in range(5):
        assert cosine_lr(0.4, epoch, 3, 10, 5) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * epoch / 5)))
    assert cosine_lr(0.4, 0, 0, 10, 5, warmup_epochs=2) == pytest.approx(0.4 / 20)
    assert cosine_lr(0.4, 1, 9, 10, 5, warmup_epochs=2) == pytest.approx(0.4)
    assert cosine_lr(0.4, 2, 0, 10, 5, warmup_epochs=2) == pytest.approx(0.4)


def test_val_shards_cover_every_image_once_without_padding():
    for length in (0, 1, 7, 12):
        shards = [list(data.ShardSampler(length, 3, r)) for r in range(3)]
        assert sorted(i for s in shards for i in s) == list(range(length))


def test_train_sampler_resumes_mid_epoch_with_the_same_order(tmp_path):
    dataset = list(range(10))
    full = data.TrainSampler(dataset, 2, 1, seed=5)
    full.set_position(3)
    resumed = data.TrainSampler(dataset, 2, 1, seed=5)
    resumed.set_position(3, skip_samples=2)
    assert list(resumed) == list(full)[2:] and len(resumed) == len(full) - 2
    other_epoch = data.TrainSampler(dataset, 2, 1, seed=5)
    other_epoch.set_position(4)
    assert list(other_epoch) != list(full)


def test_a_resumed_epoch_starts_after_the_images_its_checkpoint_trained_on():
    # 64 samples per process; the checkpoint took 3 steps of 8 images (24)
    assert data.resume_position(64, 8, 8, 3, 24, 8) == (3, 24)  # the same images per step: where it stopped
    assert data.resume_position(64, 16, 4, 3, None, None) == (3, 48)  # a checkpoint without the counts
    assert data.resume_position(64, 16, 4, 3, 24, 8) == (2, 24)  # 40 left: steps 2 and 3 of 16 (8 left out)
    assert data.resume_position(64, 4, 16, 3, 24, 8) == (6, 24)  # 40 left: steps 6..15 of 4
    assert data.resume_position(64, 16, 4, 2, 20, 16) == (2, 20)  # after an earlier change: on from image 20
    assert data.resume_position(64, 4, 16, 8, 64, 8) == (16, 64)  # a finished epoch (validation pending) stays so
    assert data.resume_position(60, 4, 15, 7, 56, 8) == (15, 56)  # its run had no whole step of 8 left either


def test_fps_window_never_leaves_zero_steps():
    assert [steady_state_window(n) for n in (1, 2, 5, 6, 100)] == [0, 1, 1, 5, 5]


def test_unreadable_val_image_is_left_out_and_named(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, train=1, val=2)
    bad = corrupt(next((root / "val").rglob("*.JPEG")))
    dataset = data.RobustImageFolder(root / "val", data.val_transform(36, 32), substitute=False)
    images, targets, bad_paths = data.collate_skipping([dataset[i] for i in range(len(dataset))])
    assert images.shape == (3, 3, 32, 32) and len(targets) == 3
    assert len(bad_paths) == 1 and str(bad) in bad_paths[0]
    train = data.RobustImageFolder(root / "val", data.train_transform(32), substitute=True, seed=0)
    index = [p for p, _ in train.samples].index(str(bad))
    image, _, item_bad = train[index]
    assert image.shape == (3, 32, 32) and str(bad) in item_bad[0]  # replaced by the next readable image


def test_per_sample_augmentation_does_not_depend_on_order(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=1, train=3, val=1)
    dataset = data.RobustImageFolder(root / "train", data.train_transform(16), substitute=True, seed=3)
    dataset.set_epoch(2)
    forward = [dataset[i][0] for i in range(3)]
    backward = [dataset[i][0] for i in reversed(range(3))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    dataset.set_epoch(3)
    assert not torch.equal(dataset[0][0], forward[0])


def test_more_than_one_percent_unreadable_is_refused():
    data.check_bad_fraction("train", 1, 100)
    with pytest.raises(data.DataError, match=r"train split: 2 of 100 images \(2.0%\).*x.JPEG"):
        data.check_bad_fraction("train", 2, 100, ["x.JPEG (broken)"])


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such directory"),
    ("empty", "no 'train' folder"),
    ("flat", "holds images but no class folders"),
    ("mismatch", r"train and val class lists differ \(only in train: n00001003\)"),
    ("no_images", "class folders without images"),
])
def test_bad_data_path_fails_before_any_work_with_one_line(tmp_path, capsys, case, expected):
    root = tmp_path / "d"
    if case == "empty":
        root.mkdir()
    elif case == "flat":
        make_image_folder(root, classes=1, train=1, val=1)
        for image in (root / "train").rglob("*.JPEG"):
            image.rename(root / "train" / image.name)
        (root / "train" / "n00001000").rmdir()
    elif case == "mismatch":
        make_image_folder(root, classes=4, train=1, val=1)
        for image in (root / "val" / "n00001003").iterdir():
            image.unlink()
        (root / "val" / "n00001003").rmdir()
    elif case == "no_images":
        make_image_folder(root, classes=2, train=1, val=1)
        (root / "train" / "n00001001" / "n00001001_0.JPEG").unlink()
    started = time.perf_counter()
    assert run_main(["--data_path", root, "--device", "cpu", "--output-dir", tmp_path / "out"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("main.py: error: --data_path") and "Traceback" not in err[0]
    assert __import__("re").search(expected, err[0]), err[0]
    assert time.perf_counter() - started < 5 and not (tmp_path / "out" / "checkpoint.pth.tar").exists()


def test_min_crop_scale_bounds_the_random_crop_area(tmp_path):
    crop = data.train_transform(32, min_crop_scale=0.5).transforms[0]
    assert crop.scale == (0.5, 1.0) and data.train_transform(32).transforms[0].scale == (0.08, 1.0)
    image = __import__("PIL.Image").Image.new("RGB", (200, 100))
    torch.manual_seed(0)
    areas = [h * w / (200 * 100) for _, _, h, w in (crop.get_params(image, crop.scale, crop.ratio) for _ in range(200))]
    assert min(areas) >= 0.45 and max(areas) <= 1.0


def test_max_crop_aspect_sets_the_random_crop_ratio_range():
    crop = data.train_transform(32, max_crop_aspect=2.0).transforms[0]
    assert crop.ratio == (0.5, 2.0) and data.train_transform(32).transforms[0].ratio == pytest.approx((3 / 4, 4 / 3))
    assert main.get_args_parser().parse_args([]).max_crop_aspect == pytest.approx(4 / 3)


@pytest.mark.parametrize("flag, value, message", [
    ("--min-crop-scale", "0", "must be in (0, 1]"), ("--min-crop-scale", "1.5", "must be in (0, 1]"),
    ("--min-crop-scale", "-0.1", "must be in (0, 1]"), ("--max-crop-aspect", "0.5", "must be 1 or more"),
])
def test_crop_flags_out_of_range_are_refused(tmp_path, capsys, flag, value, message):
    root = make_image_folder(tmp_path / "d", classes=2, train=1, val=1)
    assert run_main(["--data_path", root, "--device", "cpu", "--output-dir", tmp_path / "out", flag, value]) != 0
    assert f"{flag} {float(value)}: {message}" in capsys.readouterr().err


def test_class_names_come_from_synset_words(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, train=1, val=1)
    assert data.read_class_names(root, ["n00001000", "n00001001", "n99"]) == \
        ["colour 0, a test class", "colour 1, a test class", "n99"]
    (tmp_path / "synset_words.txt").write_text("n00001000 parent-level name\n")
    (root / "synset_words.txt").unlink()
    assert data.read_class_names(root, ["n00001000"]) == ["parent-level name"]


def test_auto_resume_picks_the_newest_checkpoint(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None
    save_training_checkpoint({"epoch": 1, "state_dict": {}, "args": plain_data({"p": tmp_path})}, tmp_path, True)
    assert find_latest_checkpoint(tmp_path).name == "checkpoint.pth.tar"
    os.utime(tmp_path / "checkpoint.pth.tar", (1, 1))
    assert find_latest_checkpoint(tmp_path).name == "model_best.pth.tar"
    assert torch.load(tmp_path / "model_best.pth.tar", weights_only=True)["args"] == {"p": str(tmp_path)}


def test_mid_epoch_checkpoints_fall_due_every_n_global_steps_or_m_minutes_after_the_last_checkpoint():
    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    by_steps = CheckpointInterval(steps=3, clock=clock)
    assert [step for step in range(1, 10) if by_steps.due(step)] == [3, 6, 9]
    by_time = CheckpointInterval(seconds=600.0, clock=clock)
    now[0] += 599.0
    assert not by_time.due(1)
    now[0] += 1.0
    assert by_time.due(2)
    by_time.restart()  # any checkpoint, an epoch end's too, starts the interval again
    now[0] += 300.0
    assert not by_time.due(3)
    assert not any(CheckpointInterval(clock=clock).due(step) for step in range(1, 5))  # off by default
    with pytest.raises(ValueError, match="must not be negative"):
        CheckpointInterval(steps=-1)


@pytest.mark.parametrize("flag, message", [("--checkpoint-steps=-1", "--checkpoint-steps -1: must be 0 or more"),
                                           ("--checkpoint-minutes=-5", "--checkpoint-minutes -5: must be 0 or more"),
                                           ("--dist-timeout=0", "--dist-timeout 0: must be more than 0 seconds")])
def test_bad_checkpoint_intervals_and_dist_timeouts_are_refused_with_one_line(tmp_path, capsys, flag, message):
    assert run_main(["--synthetic", "--device", "cpu", "--output-dir", tmp_path, flag]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"main.py: error: {message}"]


def test_background_checkpoint_holds_the_state_at_submit_and_reports_a_failed_write(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_moment = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    with CheckpointWriter() as writer:
        writer.submit({"epoch": 1, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
                      tmp_path, is_best=True)
        optimizer.step()  # training goes on while the file is written: the file keeps the submitted state
        with torch.no_grad():
            model.weight.add_(1.0)
        assert writer.wait() == tmp_path / "checkpoint.pth.tar"
    for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
        saved = torch.load(tmp_path / name, weights_only=True)
        assert saved["epoch"] == 1 and set(saved["state_dict"]) == set(expected)
        for key, value in expected.items():
            assert torch.equal(saved["state_dict"][key], value)
        assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"], expected_moment)
        fresh = torch.nn.Linear(3, 2)
        fresh.load_state_dict(saved["state_dict"])  # a state dict (with its metadata) that loads strictly
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    writer = CheckpointWriter()
    writer.submit({"epoch": 2, "state_dict": {}}, blocker, is_best=False)
    with pytest.raises(OSError) as failure:
        writer.close()
    assert "not_a_folder" in str(failure.value)
    with pytest.raises(RuntimeError, match="non-finite"):  # an error already on its way out wins
        with CheckpointWriter() as writer:
            writer.submit({"epoch": 3, "state_dict": {}}, blocker, is_best=False)
            raise RuntimeError("non-finite loss")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_checkpoint_writer_runs_at_the_lowest_cpu_priority_so_the_step_keeps_its_cores(tmp_path):
    # its serialisation must not take a core from the training step's compute threads
    with CheckpointWriter() as writer:
        niceness = writer._executor.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert niceness.result() == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19  # the training thread keeps its own


def test_failed_writes_name_the_file_and_the_checkpoint_writer_reports_them_without_waiting(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"^--output-dir .*a_file/out: cannot write there \(Not a directory\)$"):
        prepare_output_dir(blocker / "out")
    assert prepare_output_dir(tmp_path / "new" / "out").is_dir() and not list((tmp_path / "new" / "out").iterdir())
    with pytest.raises(OSError, match=r"^.*a_file/train_log.jsonl: cannot write \(.*a_file is a file, not a folder\)$"):
        append_record(blocker / "train_log.jsonl", {"epoch": 0})
    writer = CheckpointWriter()
    writer.check()  # nothing submitted: nothing to report
    writer.submit({"epoch": 2, "state_dict": {}}, blocker, is_best=False)
    deadline = time.monotonic() + 60
    while writer._pending is not None and not writer._pending.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(OSError, match=r"a_file/checkpoint.pth.tar: cannot write \(.*a_file is a file, not a folder\)$"):
        writer.check()
    writer.close()  # the error was reported once


def test_resumed_optimizer_keeps_its_moments_and_takes_this_runs_weight_decay_and_momentum(tmp_path):
    model = torch.nn.Linear(3, 2)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.ones(1, 3)).sum().backward()
    saved.step()
    state = saved.state_dict()
    same = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    assert restore_optimizer(same, state, "c.pth.tar") == []
    changed = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.8, weight_decay=5e-4)
    assert restore_optimizer(changed, state, "c.pth.tar") == ["--wd 0.0005 (checkpoint: 0.0001)",
                                                               "--momentum 0.8 (checkpoint: 0.9)"]
    group = changed.param_groups[0]
    assert (group["weight_decay"], group["momentum"]) == (5e-4, 0.8)
    assert torch.equal(changed.state_dict()["state"][0]["momentum_buffer"], state["state"][0]["momentum_buffer"])
    with pytest.raises(CheckpointError, match=r"^c.pth.tar: trained with --optimizer sgd, so it cannot be resumed "
                                              r"with --optimizer adamw"):
        restore_optimizer(torch.optim.AdamW(model.parameters()), state, "c.pth.tar")
    with pytest.raises(CheckpointError, match=r"^c.pth.tar: its optimizer state does not fit"):
        restore_optimizer(torch.optim.SGD([model.weight], lr=0.1, momentum=0.9), state, "c.pth.tar")
