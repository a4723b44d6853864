"""quickstart.sh's stages after training, on a tiny sample and a seeded checkpoint, and stage reuse."""
import json

import torch

from senet import se_resnext50_32x4d
from seresnext import pipeline
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
