"""quickstart.sh's stages after training, on a tiny sample and a seeded checkpoint, and stage reuse."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from senet import se_resnext50_32x4d
from seresnext import pipeline
from seresnext.checkpoint import save_checkpoint
from seresnext.sample_data import generate
from train_utils import ROOT


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
    (work / ".done").mkdir()
    for stage in ("data", "train"):  # stand-ins for the slow stages
        (work / ".done" / stage).write_text("0\n")

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
    assert again.count("done before, reused") == len(pipeline.STAGES)

    # a top-1 floor that is not met is a failure, and so is a broken stage
    assert pipeline.main(["--work_dir", str(work), "--min-top1", "100.5"]) == 1
    (work / "se_resnext50_32x4d.onnx").write_bytes(b"broken")
    assert pipeline.main(["--work_dir", str(work), "--min-top1", "0", "--from", "build"]) == 1
    assert "stage 'build' failed" in capsys.readouterr().out


def test_sample_aipp_config_keeps_upstream_values_at_the_sample_size(tmp_path):
    job = pipeline.Job(work=tmp_path, data=tmp_path, sample=True, recipe=dict(pipeline.SAMPLE_TRAIN))
    text = pipeline.aipp_config(job).read_text()
    assert "src_image_size_w : 72" in text and "crop_size_w : 64" in text and "load_start_pos_w : 4" in text
    assert "var_reci_chn_0: 0.0171247538316637" in text


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

pipeline.stage_data = tiny_sample
if sys.argv[1] == "job":
    sys.exit(pipeline.main(sys.argv[2:]))
work = Path(sys.argv[2])
job = pipeline.Job(work=work, data=work / "sample", sample=True, recipe=dict(pipeline.SAMPLE_TRAIN))
pipeline.stage_data(job)
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
    train_output = out.split("[quickstart] train: $ ")[1].splitlines()
    assert train_output[-2].startswith("    Se-ResNext-50-32x4d: acc run on cpu")  # nothing after it but the line
    stopped = torch.load(checkpoint, weights_only=True)
    assert (stopped["epoch"], stopped["epoch_step"]) < (3, 0)

    rerun = subprocess.run(job, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert (f"[quickstart] train: continuing the interrupted run from its checkpoint (epoch {stopped['epoch']}, "
            f"step {stopped['epoch_step']})") in rerun.stdout

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
