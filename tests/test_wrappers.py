"""The upstream launch wrappers (test/*.sh) on tiny data: arguments, summary lines, <CaseName>.log, 8p on cpu."""
import os
import re

import pytest
import torch

from train_utils import ROOT, make_image_folder, run_main, run_script

OUTPUT = ROOT / "test" / "output" / "0"
QUICK = ["--image_size=32", "--batch_size=8", "--epochs=1", "--workers=0", "--print-freq=1"]


def case_log(name: str) -> dict:
    lines = (OUTPUT / f"{name}.log").read_text().splitlines()
    return dict(line.split(" = ", 1) for line in lines)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("data") / "d", classes=4, train=4, val=3)
    (root / "val" / "n00001003" / "n00001003_2.JPEG").unlink()  # 11 val images: uneven shards on 2 ranks
    return root


@pytest.mark.parametrize("script", ["train_full_1p.sh", "train_performance_1p.sh", "train_full_8p.sh",
                                    "train_performance_8p.sh", "train_eval_8p.sh"])
def test_wrappers_require_data_path(script):
    result = run_script(["bash", f"test/{script}", "--device_id=0"], timeout=30)
    assert result.returncode == 1 and result.stdout.strip() == '[Error] para "data_path" must be confing'


def test_wrappers_take_only_numbers_for_nproc_batch_accumulation_and_device_id(dataset, tmp_path):
    """--nproc, --batch_size and --accum_steps go into shell arithmetic (which runs command substitutions) and the
    device id into the path that is emptied with rm -rf: anything but a number is refused before either."""
    planted = tmp_path / "planted"
    result = run_script(["bash", "test/train_full_8p.sh", f"--data_path={dataset}", f"--nproc=a[$(touch {planted})]",
                         "--device=cpu"], timeout=60)
    assert result.returncode == 1 and not planted.exists()
    assert result.stdout.strip() == f"[Error] --nproc=a[$(touch {planted})]: expected a positive integer"
    for option in ("--batch_size", "--accum_steps"):
        result = run_script(["bash", "test/train_full_1p.sh", f"--data_path={dataset}",
                             f"{option}=a[$(touch {planted})]"], timeout=60)
        assert result.returncode == 1 and not planted.exists()
        assert result.stdout.strip() == f"[Error] {option}=a[$(touch {planted})]: expected a positive integer"
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("x")
    outside = os.path.relpath(canary, ROOT / "test" / "output")  # test/output/<id> is emptied with rm -rf
    result = run_script(["bash", "test/train_full_1p.sh", f"--data_path={dataset}", f"--device_id={outside}"],
                        timeout=60)
    assert result.returncode == 1 and (canary / "keep.txt").exists()
    assert result.stdout.strip() == f"[Error] --device_id={outside}: expected a device number (0, 1, ...)"
    result = run_script(["bash", "test/train_full_1p.sh", f"--data_path={dataset}"], timeout=60,
                        env={"ASCEND_DEVICE_ID": outside})  # the environment's device id names that folder too
    assert result.returncode == 1 and (canary / "keep.txt").exists()
    assert result.stdout.strip() == f"[Error] ASCEND_DEVICE_ID={outside}: expected a device number (0, 1, ...)"


def test_full_1p_prints_upstreams_summary_and_case_log(dataset, tmp_path):
    """Also: the wrapper's --amp on a CPU without native bfloat16 (oneDNN capped below it) trains in float32."""
    result = run_script(["bash", "test/train_full_1p.sh", f"--data_path={dataset}", f"--output_dir={tmp_path}",
                         *QUICK], env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"})
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.split("------------------ Final result ------------------\n")[1].splitlines()
    assert re.fullmatch(r"Final Performance images/sec : \d+\.\d{3}", summary[0])
    assert re.fullmatch(r"Final Train Accuracy : \d+\.\d{3}", summary[1])
    assert re.fullmatch(r"E2E Training Duration sec : \d+", summary[2])
    fields = case_log("Se-ResNext-50-32x4d_bs8_1p_acc")
    assert list(fields) == ["Network", "RankSize", "BatchSize", "DeviceType", "CaseName", "ActualFPS",
                            "TrainingTime", "TrainAccuracy", "ActualLoss", "E2ETrainingTime"]
    assert (fields["Network"], fields["RankSize"], fields["BatchSize"]) == ("Se-ResNext-50-32x4d", "1", "8")
    fps = float(summary[0].split(":")[1])
    assert float(fields["TrainingTime"]) == pytest.approx(8 * 1000 / fps, abs=0.01)  # ms per step
    losses = (OUTPUT / "train_Se-ResNext-50-32x4d_bs8_1p_acc_loss.txt").read_text().split()
    assert len(losses) == 2 and fields["ActualLoss"] == losses[-1]
    log = (OUTPUT / "train_0.log").read_text()
    assert ("=> precision: float32 (--amp: this CPU has no native bfloat16; bfloat16 would be emulated and slower"
            in log and "--device cpu" in log)
    assert (tmp_path / "model_best.pth.tar").is_file()
    assert torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)["args"]["checkpoint_minutes"] == 10
    # a rerun into the same folder starts a new run there, as upstream's wrappers did; --accum_steps=2 makes
    # steps of 2 x 8 images, and BatchSize, the CaseName and TrainingTime count them; main.py's flags pass through
    result = run_script(["bash", "test/train_full_1p.sh", f"--data_path={dataset}", f"--output_dir={tmp_path}",
                         *QUICK, "--stop-step-num=1", "--accum_steps=2", "--checkpoint-steps=1",
                         "--checkpoint-minutes=0"])
    assert result.returncode == 0, result.stdout + result.stderr
    saved = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert saved["args"]["overwrite"] is True and (saved["args"]["accum_steps"], saved["global_step"]) == (2, 1)
    assert (saved["args"]["checkpoint_steps"], saved["args"]["checkpoint_minutes"]) == (1, 0)
    fields = case_log("Se-ResNext-50-32x4d_bs16_1p_acc")
    fps = float(fields["ActualFPS"])
    assert fields["BatchSize"] == "16" and float(fields["TrainingTime"]) == pytest.approx(16 * 1000 / fps, abs=0.01)
    assert "=> batch size 16 per optimizer step: 1 process(es) x 8 images x 2 accumulated batch(es)" in \
        (OUTPUT / "train_0.log").read_text()


def test_8p_on_cpu_runs_two_processes_and_reduces_validation(dataset, tmp_path, capsys):
    result = run_script(["bash", "test/train_full_8p.sh", f"--data_path={dataset}", f"--output_dir={tmp_path}",
                         "--nproc=2", *QUICK, "--opt-level=O0"])
    assert result.returncode == 0, result.stdout + result.stderr
    log = (OUTPUT / "train_0.log").read_text()
    assert "(2 process(es), backend gloo)" in log and "over 11 images (2 process(es)" in log
    assert case_log("Se-ResNext-50-32x4d_bs8_2p_acc")["RankSize"] == "2"

    result = run_script(["bash", "test/train_eval_8p.sh", f"--data_path={dataset}", f"--output_dir={tmp_path}",
                         "--nproc=2", "--batch_size=8", "--workers=0", "--image_size=32", "--opt-level=O0"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Final Performance" not in result.stdout
    fields = case_log("Se-ResNext-50-32x4d_bs8_2p_eval")
    assert "ActualFPS" not in fields and "TrainingTime" not in fields
    two_process_top1 = fields["TrainAccuracy"]

    # The same checkpoint evaluated by one process over the whole val set gives the same top-1.
    assert run_main(["--data_path", dataset, "--resume", tmp_path / "model_best.pth.tar", "--evaluate",
                     "--device", "cpu", "-b", 8, "-j", 0, "--image-size", 32, "--output-dir", tmp_path]) == 0
    single = re.search(r"\[AVG-ACC\] \* Acc@1 (\S+)", capsys.readouterr().out).group(1)
    assert single == two_process_top1
