"""quickstart.sh's stages after training, on a tiny sample and a seeded checkpoint, and stage reuse."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from offline_helpers import ROOT

from senet import se_resnext50_32x4d
from seresnext import pipeline
from seresnext.aipp_config import load_aipp_config
from seresnext.checkpoint import save_checkpoint
from seresnext.sample_data import generate


def test_offline_stages_run_the_documented_chain_and_reruns_reuse_them(tmp_path, capsys):
    work = tmp_path / "work"
    sample = generate(work / "sample", num_classes=3, train_per_class=2, val_per_class=6, workers=1)
    (work / "train").mkdir(parents=True)
    torch.manual_seed(0)
    model = se_resnext50_32x4d(num_classes=3)
    save_checkpoint({"epoch": 1, "best_acc1": 40.0, "state_dict": model.state_dict(), "arch": "se_resnext50_32x4d"},
                    work / "train" / "model_best.pth.tar")
    (work / "train" / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in (  # as main.py writes it
        {"epoch": 0, "images_per_second": 50.0, "val_top1": 40.0, "val_top5": 100.0},
        {"epoch": 1, "images_per_second": 52.0, "val_top1": None, "val_top5": None},  # not validated (--eval-freq)
        {"epoch": 2, "images_per_second": 51.0, "val_top1": 45.0, "val_top5": 100.0})))
    job = pipeline.Job(work=work, data=work / "sample", sample=True, recipe=dict(pipeline.SAMPLE_TRAIN))
    pipeline.prepare_offline_data(job)
    (work / ".done").mkdir()
    for stage in ("data", "train"):  # stand-ins for the slow stages, stamped as they would have been
        pipeline.write_stamp(work / ".done" / stage, pipeline.stage_inputs(job, stage))

    assert pipeline.main(["--work_dir", str(work), "--min-top1", "0"]) == 0
    out = capsys.readouterr().out
    for mode in ("bin", "jpg"):
        result = json.loads((work / f"result_{mode}" / "result.json").read_text())
        assert result["value"][0] == {"key": "Number of images", "value": str(sample.num_val)}
    assert "bash se_resnext50_32x4d_atc.sh" in out and "-useDvpp=true" in out
    assert "summary" in out and "JPEG path" in out
    assert any(line.startswith("training (main.py, val set)") and line.split()[4] == "45.00"
               for line in out.splitlines()), out

    assert pipeline.main(["--work_dir", str(work), "--min-top1", "0"]) == 0
    again = capsys.readouterr().out
    assert again.count("done before with the same inputs, reused") == len(pipeline.STAGES)

    # a top-1 floor that is not met is a failure, and so is a broken stage
    assert pipeline.main(["--work_dir", str(work), "--min-top1", "100.5"]) == 1
    (work / "se_resnext50_32x4d.onnx").write_bytes(b"broken")
    assert pipeline.main(["--work_dir", str(work), "--min-top1", "0", "--from", "build"]) == 1
    assert "stage 'build' failed" in capsys.readouterr().out


@pytest.mark.parametrize("resize, start", [(64, 0), (72, 4), (74, 4)])
def test_sample_aipp_config_keeps_upstream_values_at_the_sample_size(tmp_path, resize, start):
    """DVPP squashes to the val resize size, AIPP crops the centre (the sample recipe's 64: no crop margin;
    crops start on even pixels for YUV420SP)."""
    job = pipeline.Job(work=tmp_path, data=tmp_path, sample=True,
                       recipe={**pipeline.SAMPLE_TRAIN, "val_resize": resize})
    config = load_aipp_config(pipeline.aipp_config(job))  # the runner's parser, which checks the crop fits
    assert (config.src_image_size_w, config.src_image_size_h) == (resize, resize)
    assert config.crop and (config.crop_size_w, config.crop_size_h) == (64, 64)
    assert (config.load_start_pos_w, config.load_start_pos_h) == (start, start)
    assert config.var_reci_chn[0] == pytest.approx(0.0171247538316637)


def test_sample_recipe_trains_small_and_validates_the_whole_image_at_the_deploy_size():
    recipe = pipeline.SAMPLE_TRAIN
    assert recipe["image_size"] == recipe["val_resize"] == 64  # no centre crop: the whole image, at 64 px
    sizes = pipeline._train_sizes(recipe)
    assert [sizes(epoch) for epoch in range(recipe["epochs"])] == [48] * 8 + [56] * 17


# The job with a tiny recipe and a tiny sample (the real ones take minutes): `driver.py job ARGS` runs
# quickstart's main(), `driver.py train WORK` only its data and train stages (an uninterrupted reference).
DRIVER = '''
import sys
from pathlib import Path
from seresnext import pipeline
from seresnext.sample_data import generate

pipeline.SAMPLE_TRAIN = {"image_size": 32, "val_resize": 36, "epochs": 3, "batch_size": 4, "lr": 0.004,
                         "extra": ["--optimizer=adamw", "--wd=0.05", "--min-crop-scale=0.35", "--warmup-epochs=1",
                                   "--seed=0", "--label-smoothing=0.1", "--channels-last", "--eval-freq=2",
                                   "--print-freq=1", "--opt-level=O0", "--workers=0"]}

def tiny_sample(job):
    generate(job.data, num_classes=3, train_per_class=4, val_per_class=4, min_size=48, max_size=64, workers=1,
             overwrite=True)
    pipeline.prepare_offline_data(job)

pipeline.STAGE_FUNCTIONS["data"] = tiny_sample
if sys.argv[1] == "job":
    sys.exit(pipeline.main(sys.argv[2:]))
work = Path(sys.argv[2])
job = pipeline.Job(work=work, data=work / "sample", sample=True, recipe=dict(pipeline.SAMPLE_TRAIN))
tiny_sample(job)
pipeline.stage_train(job)
'''


def test_ctrl_c_prints_one_line_and_a_rerun_continues_training_to_the_same_figures(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = [sys.executable, str(driver), "job", "--work_dir", str(tmp_path / "work"), "--min-top1", "0"]
    checkpoint = tmp_path / "work" / "train" / "checkpoint.pth.tar"
    proc = subprocess.Popen(job, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the first epoch is done
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches every process of the job
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:] + err[-3000:]
    assert err == "" and out.splitlines()[-1] == "[quickstart] interrupted; run it again to continue"
    train_output = [line for line in out.split("[quickstart] train: $ ")[1].splitlines()
                    if not line.startswith("[quickstart] train: epoch ")]  # the progress of finished epochs
    assert train_output[-2].startswith("    Se-ResNext-50-32x4d: acc run on cpu")  # nothing after it but the line
    stopped = torch.load(checkpoint, weights_only=True)
    assert (stopped["epoch"], stopped["epoch_step"]) < (3, 0)
    assert stopped["args"]["checkpoint_minutes"] == 0  # the sample recipe: epoch ends only (main.py's default: 10)

    rerun = subprocess.run(job, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert (f"[quickstart] train: continuing the interrupted run from its checkpoint (epoch {stopped['epoch']}, "
            f"step {stopped['epoch_step']})") in rerun.stdout
    progress = [line for line in rerun.stdout.splitlines() if line.startswith("[quickstart] train: epoch ")]
    assert progress and progress[-1].startswith("[quickstart] train: epoch 3/3: 32 px, ")  # the epochs it ran
    assert len(progress) == 3 - stopped["epoch"] and "left at this speed" not in progress[-1]

    reference = subprocess.run([sys.executable, str(driver), "train", str(tmp_path / "reference")], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    resumed_dir, reference_dir = tmp_path / "work" / "train", tmp_path / "reference" / "train"
    for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
        resumed, straight = (torch.load(folder / name, weights_only=True)["state_dict"]
                             for folder in (resumed_dir, reference_dir))
        assert [k for k in straight if not torch.equal(resumed[k], straight[k])] == []

    def validations(folder):
        records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
        return [(r["epoch"], r["val_top1"], r["val_top5"], r["val_loss"]) for r in records if r["val_top1"] is not None]
    assert validations(resumed_dir) == validations(reference_dir) and len(validations(reference_dir)) == 2
    best_top1 = max(v[1] for v in validations(reference_dir))
    training_row = next(line for line in rerun.stdout.splitlines() if line.startswith("training (main.py, val set)"))
    assert float(training_row.split()[4]) == pytest.approx(best_top1, abs=0.005)


def test_train_stage_continues_only_an_unfinished_run_of_the_same_recipe(tmp_path):
    """So `--force` (and a changed recipe) start training again, and a rerun after Ctrl-C continues it."""
    assert pipeline.interrupted_training(tmp_path, 25) is None  # no checkpoint
    for (epoch, step, planned), recipe_epochs, expected in (
            ((3, 2, 25), 25, "epoch 3, step 2"), ((7, 0, 25), None, "epoch 7, step 0"),
            ((24, 5, 25), 25, "epoch 24, step 5"),  # the last epoch's validation still to run
            ((25, 0, 25), 25, None),  # finished: a rerun (--force) starts a new run
            ((3, 2, 25), 30, None)):  # another recipe
        save_checkpoint({"epoch": epoch, "epoch_step": step, "state_dict": {}, "args": {"epochs": planned}},
                        tmp_path / "checkpoint.pth.tar")
        assert pipeline.interrupted_training(tmp_path, recipe_epochs) == expected
    (tmp_path / "checkpoint.pth.tar").write_bytes(b"not a checkpoint")
    assert pipeline.interrupted_training(tmp_path, 25) is None


def _stub_stages(monkeypatch, calls, fail=()):
    """Stand-ins for every stage but data: each records its call and writes its output files."""
    def stub(stage, outputs):
        def run(job):
            calls.append(stage)
            if stage in fail:
                (job.path("train")).mkdir(parents=True, exist_ok=True)
                (job.path("train", "checkpoint.pth.tar")).write_text("half")
                raise pipeline.StageError(f"stage '{stage}' failed")
            for output in outputs:
                path = job.path(*output.split("/"))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{stage} {len(calls)}")
        return run

    real_data_stage = pipeline.STAGE_FUNCTIONS["data"]

    def data(job):
        calls.append("data")
        if job.sample:  # a small sample instead of the default one
            generate(job.data, num_classes=3, train_per_class=1, val_per_class=2, min_size=40, max_size=60,
                     workers=1, overwrite=True)
            pipeline.prepare_offline_data(job)
        else:
            real_data_stage(job)

    outputs = {"train": ["train/model_best.pth.tar"], "export": ["se_resnext50_32x4d.onnx"],
               "preprocess": ["prep_bin/a.bin"], "info": ["seresnext50_val.info", "ImageNet.info"],
               "build": ["seresnext50_32x4d_16.onnx", "seresnext50_32x4d_aipp_16.onnx"],
               "run_bin": ["result_bin/dumpOutput_device0/a_1.txt"],
               "run_jpg": ["result_jpg/dumpOutput_device0/a_1.txt"],
               "metric": ["result_bin/result.json"]}
    stages = {"data": data, **{name: stub(name, files) for name, files in outputs.items()}}
    monkeypatch.setattr(pipeline, "STAGE_FUNCTIONS", stages)
    monkeypatch.setattr(pipeline, "summary", lambda job: ("summary", [100.0]))


def test_a_changed_input_redoes_its_stage_and_the_later_ones_and_says_why(tmp_path, monkeypatch, capsys):
    calls = []
    _stub_stages(monkeypatch, calls)
    work = tmp_path / "work"
    assert pipeline.main(["--work_dir", str(work)]) == 0
    assert calls == list(pipeline.STAGES)
    calls.clear()
    assert pipeline.main(["--work_dir", str(work)]) == 0
    assert calls == [] and capsys.readouterr().out.count("done before with the same inputs, reused") == 9

    assert pipeline.main(["--work_dir", str(work), "--epochs", "3"]) == 0
    assert calls == list(pipeline.STAGES[1:])
    out = capsys.readouterr().out
    assert f"[2/9] train: redone: recipe.epochs changed ({pipeline.SAMPLE_TRAIN['epochs']} -> 3)" in out
    assert "[3/9] export: redone: after train" in out and "[1/9] data: done before with the same inputs" in out

    calls.clear()  # a real dataset after the sample run: nothing of the sample's is reused
    real = generate(tmp_path / "imagenet", num_classes=3, train_per_class=1, val_per_class=2, min_size=40,
                    max_size=60, workers=1).root
    assert pipeline.main(["--work_dir", str(work), "--data_path", str(real)]) == 0
    assert calls == list(pipeline.STAGES)
    assert f"[1/9] data: redone: data_path changed ({work / 'sample'} -> {real})" in capsys.readouterr().out

    calls.clear()  # the dataset's label file changes: the data stage checks it again, and the chain reruns
    (real / "val_label.txt").write_text((real / "val_label.txt").read_text().replace(" 0\n", " 2\n", 1))
    assert pipeline.main(["--work_dir", str(work), "--data_path", str(real)]) == 0
    out = capsys.readouterr().out
    assert calls == list(pipeline.STAGES) and "[1/9] data: redone: val_label.txt changed" in out
    assert "gives 1 of the 6 images another class than their val/<wnid>/ folder" in out

    calls.clear()  # an image added to a class of the training set: training and what follows it run again
    wnid = sorted(p.name for p in (real / "train").iterdir())[1]
    shutil.copy(next((real / "train" / wnid).iterdir()), real / "train" / wnid / "added.JPEG")
    assert pipeline.main(["--work_dir", str(work), "--data_path", str(real)]) == 0
    assert calls == list(pipeline.STAGES[1:])
    assert f"[2/9] train: redone: train images per class.{wnid} changed (1 -> 2)" in capsys.readouterr().out


def test_an_interrupted_training_is_continued_only_with_the_same_inputs(tmp_path, monkeypatch, capsys):
    calls = []
    _stub_stages(monkeypatch, calls, fail=("train",))
    work = tmp_path / "work"
    assert pipeline.main(["--work_dir", str(work)]) == 1
    assert (work / "train" / "checkpoint.pth.tar").is_file()
    _stub_stages(monkeypatch, calls)
    seen = {}
    train = pipeline.STAGE_FUNCTIONS["train"]
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "train",
                        lambda job: (seen.setdefault("kept", (job.path("train", "checkpoint.pth.tar")).exists()),
                                     train(job)))
    assert pipeline.main(["--work_dir", str(work)]) == 0
    assert seen["kept"]  # the same recipe: main.py may continue from its checkpoint
    _stub_stages(monkeypatch, calls, fail=("train",))
    assert pipeline.main(["--work_dir", str(work), "--force"]) == 1
    _stub_stages(monkeypatch, calls)
    seen.clear()
    train = pipeline.STAGE_FUNCTIONS["train"]
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "train",
                        lambda job: (seen.setdefault("kept", (job.path("train", "checkpoint.pth.tar")).exists()),
                                     train(job)))
    assert pipeline.main(["--work_dir", str(work), "--epochs", "2"]) == 0
    assert seen["kept"] is False  # another recipe: its checkpoint is not continued


def _as_real_imagenet(root):
    """The sample set as a real ImageNet comes: train/ and val/<wnid>/ only."""
    generate(root, num_classes=4, train_per_class=1, val_per_class=3, min_size=40, max_size=60, workers=1)
    shutil.rmtree(root / "val_flat")
    truth = (root / "val_label.txt").read_text()
    (root / "val_label.txt").unlink()
    return truth


def test_real_data_gets_val_flat_links_and_labels_from_its_folders(tmp_path, capsys):
    data = tmp_path / "imagenet"
    truth = _as_real_imagenet(data)
    job = pipeline.Job(work=tmp_path / "work", data=data, sample=False, recipe=dict(pipeline.REAL_TRAIN["1p"]))
    pipeline.prepare_offline_data(job)
    out = capsys.readouterr().out
    assert f"data: linked the 12 val images into {tmp_path / 'work' / 'val_flat'}" in out
    assert f"data: wrote {job.labels} from val/<wnid>/ (12 images, 4 classes, 0-based)" in out
    assert job.labels.read_text() == truth  # what make_val_label.py folder writes
    links = sorted(job.val_flat.iterdir())
    assert len(links) == 12 and all(p.is_symlink() and p.resolve().parent.parent == data / "val" for p in links)


@pytest.mark.parametrize("mistake, message", [
    ("1-based", "is 1-based: every label is one more than its val/<wnid>/ folder's index"),
    ("devkit order", "numbers the classes in another order: the images of each val/<wnid>/ folder share one label, "
                     "but 4 of 4 classes are not at their sorted-WNID index"),
    ("missing lines", "has no line for 2 of the 12 images in val/"),
])
def test_a_wrong_val_label_file_is_named_and_not_used(tmp_path, capsys, mistake, message):
    data = tmp_path / "imagenet"
    truth = _as_real_imagenet(data)
    rows = [line.split() for line in truth.splitlines()]
    devkit = {0: 2, 1: 0, 2: 3, 3: 1}  # a class numbering that is not sorted-WNID order
    if mistake == "1-based":
        rows = [(name, int(label) + 1) for name, label in rows]
    elif mistake == "devkit order":
        rows = [(name, devkit[int(label)]) for name, label in rows]
    else:
        rows = rows[2:]
    (data / "val_label.txt").write_text("".join(f"{name} {label}\n" for name, label in rows))
    job = pipeline.Job(work=tmp_path / "work", data=data, sample=False, recipe=dict(pipeline.REAL_TRAIN["1p"]))
    pipeline.prepare_offline_data(job)
    lines = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(lines) == 1 and message in lines[0] and f"the chain uses {job.labels}" in lines[0]
    assert job.labels.read_text() == truth


def test_a_smaller_batch_with_accumulation_reaches_the_recipes_batch(tmp_path, monkeypatch):
    """`quickstart.sh --data_path=... --batch_size=64 --accum_steps=4`: what main.py's memory check advises on a
    machine that cannot hold the 1p recipe's 256 images reaches the wrapper."""
    args = pipeline.build_parser().parse_args(["--data_path", str(tmp_path), "--batch_size=64", "--accum_steps=4"])
    recipe = pipeline.build_recipe(args, sample=False)
    assert (recipe["batch_size"], recipe["accum_steps"], recipe["lr"]) == (64, 4, 0.1)
    assert "accum_steps" not in pipeline.build_recipe(pipeline.build_parser().parse_args([]), sample=True)
    commands = []
    monkeypatch.setattr(pipeline, "run", lambda stage, command, log, python: commands.append(command) or "")
    job = pipeline.Job(work=tmp_path / "work", data=tmp_path, sample=False, recipe=recipe)
    with pytest.raises(pipeline.StageError, match="wrote no model_best"):  # the stand-in trained nothing
        pipeline.stage_train(job)
    assert commands[0][:2] == ["bash", "test/train_full_1p.sh"]
    assert {"--batch_size=64", "--accum_steps=4", "--lr=0.1"} <= set(commands[0])


def _quickstart(env_changes, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV", "CONDA_PREFIX", "VENV")}
    env.update(env_changes)
    return subprocess.run(["bash", str(ROOT / "quickstart.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _python_without_torch(path):
    """A Python that cannot import torch (no site-packages)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/bash\nexec {os.path.realpath(sys.executable)} -S "$@"\n')
    path.chmod(0o755)
    return path


def test_quickstart_uses_a_given_python_whose_torch_works_and_refuses_one_whose_torch_does_not(tmp_path):
    result = _quickstart({"PYTHON": sys.executable}, "--help")
    assert result.returncode == 0, result.stderr
    assert f"[quickstart] using {sys.executable} (PYTHON={sys.executable}): Python " in result.stdout
    assert f"torch {torch.__version__} (cpu" in result.stdout and "usage: quickstart.sh" in result.stdout
    broken = _python_without_torch(tmp_path / "bin" / "python")
    result = _quickstart({"PYTHON": str(broken)}, "--help")
    assert result.returncode == 1 and "usage" not in result.stdout
    assert result.stderr == (f"[quickstart] error: PYTHON={broken}: its torch does not work "
                             f"(ModuleNotFoundError: No module named 'torch')\n")


def test_an_active_environment_without_a_working_torch_leaves_the_job_to_the_pinned_venv(tmp_path):
    _python_without_torch(tmp_path / "env" / "bin" / "python")
    pinned = tmp_path / "pinned"
    (pinned / "bin").mkdir(parents=True)
    (pinned / "bin" / "python").symlink_to(sys.executable)
    requirements = (ROOT / "requirements.txt").read_bytes()
    (pinned / f".installed-{hashlib.sha256(requirements * 2).hexdigest()[:16]}").touch()  # installed before
    result = _quickstart({"VIRTUAL_ENV": str(tmp_path / "env"), "VENV": str(pinned)}, "--help")
    assert result.returncode == 0, result.stderr
    assert (f"[quickstart] not using the active virtualenv {tmp_path / 'env'}: its torch does not work "
            f"(ModuleNotFoundError: No module named 'torch'); using the pinned {pinned} instead") in result.stdout
    assert "usage: quickstart.sh" in result.stdout
