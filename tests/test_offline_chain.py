"""The documented chain from a main.py checkpoint to result.json, as a user types it: main.py ->
pthtar2onnx.py (upstream's se_resnext50_gpu8p.onnx, input actual_input_1, batch 16) -> se_resnext50_32x4d_atc.sh
(which reads that input from the graph) -> benchmark.py with both generations' options -> vision_metric_ImageNet.py.
The val set holds an image with dots in its name, which must survive every step."""
import json
import os
import re
import subprocess
import sys

from offline_helpers import ROOT
from seresnext import pipeline
from seresnext.sample_data import generate

SIZE, RESIZE = 32, 36


def _run(*command, cwd):
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHON=sys.executable))
    assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout + result.stderr


def test_main_checkpoint_runs_through_export_build_both_runners_and_the_metric(tmp_path):
    data = tmp_path / "data"
    generate(data, num_classes=3, train_per_class=3, val_per_class=3, min_size=40, max_size=80, workers=1)
    dotted = data / "val_flat" / "holiday.2019.beach.JPEG"  # a dotted name, labelled like the image it was
    first = sorted((data / "val_flat").iterdir())[0]
    first.rename(dotted)
    labels = (data / "val_label.txt").read_text().replace(first.name + " ", dotted.name + " ")
    (data / "val_label.txt").write_text(labels)

    py = sys.executable
    _run(py, ROOT / "main.py", "--data_path", data, "--device", "cpu", "--epochs", "1", "-b", "9", "--workers", "0",
         "--image-size", SIZE, "--val-resize-size", RESIZE, "--output-dir", tmp_path / "ckpt", cwd=tmp_path)
    out = _run(py, ROOT / "pthtar2onnx.py", tmp_path / "ckpt" / "model_best.pth.tar", cwd=tmp_path)
    assert f"input actual_input_1[16, 3, {SIZE}, {SIZE}]" in out  # upstream's name and batch, the checkpoint's size
    _run(py, ROOT / "preprocess_se_resnext50_32x4d_pth.py", data / "val_flat", "prep_bin", "--resize", RESIZE,
         "--crop", SIZE, "--no-progress", cwd=tmp_path)
    assert (tmp_path / "prep_bin" / "holiday.2019.beach.bin").is_file()
    _run(py, ROOT / "get_info.py", "bin", "prep_bin", "seresnext50_val.info", SIZE, SIZE, cwd=tmp_path)
    job = pipeline.Job(work=tmp_path, data=data, sample=True,
                       recipe={**pipeline.SAMPLE_TRAIN, "image_size": SIZE, "val_resize": RESIZE})
    out = _run("bash", ROOT / "se_resnext50_32x4d_atc.sh", "--model=se_resnext50_gpu8p.onnx", "--batch_size=4",
               f"--aipp_config={pipeline.aipp_config(job)}", "--backend=onnxruntime", cwd=tmp_path)
    assert f"input actual_input_1:4,3,{SIZE},{SIZE}" in out

    # benchmark.x86_64's generation
    _run(py, ROOT / "benchmark.py", "-model_type=vision", "-om_path=seresnext50_32x4d_4.onnx", "-device_id=0",
         "-batch_size=4", "-input_text_path=seresnext50_val.info", f"-input_width={SIZE}", f"-input_height={SIZE}",
         "-output_binary=false", "-useDvpp=false", "-result_dir=result_bin", "-progress=false", cwd=tmp_path)
    assert (tmp_path / "result_bin" / "dumpOutput_device0" / "holiday.2019.beach_1.txt").is_file()
    _run(py, ROOT / "vision_metric_ImageNet.py", "result_bin/dumpOutput_device0/", data / "val_label.txt", "./",
         "result_bin.json", cwd=tmp_path)
    # ais_bench's generation (upstream's README since late 2022)
    out = _run(py, ROOT / "benchmark.py", "--model", "seresnext50_32x4d_4.onnx", "--input", "prep_bin/", "--output",
               "ais_out", "--outfmt", "TXT", "--batchsize", "4", "--progress=false", cwd=tmp_path)
    run_dir = re.search(r"\[INFO\] output path:(\S+)", out).group(1)
    assert (tmp_path / run_dir / "holiday.2019.beach_0.txt").is_file()
    summary = json.loads((tmp_path / (run_dir + "_summary.json")).read_text())
    assert summary["throughput"] > 0 and summary["NPU_compute_time"]["count"] == 3  # 9 images, batch 4
    _run(py, ROOT / "vision_metric_ImageNet.py", run_dir, data / "val_label.txt", "./", "result_ais.json",
         cwd=tmp_path)

    bin_result, ais_result = ((tmp_path / name).read_text() for name in ("result_bin.json", "result_ais.json"))
    assert bin_result == ais_result  # the same model on the same .bin files, whichever runner's options
    values = {row["key"]: row["value"] for row in json.loads(bin_result)["value"]}
    assert values["Number of images"] == "9" and values["Number of classes"] == "3"
