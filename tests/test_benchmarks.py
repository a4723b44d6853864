"""The benchmark scripts that are not exercised elsewhere: a small run of each checks what it reports."""
import json
import re
import subprocess
import sys

import pytest

from offline_helpers import IMAGE_SPECS, ROOT, STANDARD_AIPP, make_val_folder
from seresnext import runner


def test_profile_train_splits_a_step_into_op_groups(tmp_path):
    out = tmp_path / "profile_train.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_train.py"), "--size", "32",
                             "--batch", "2", "--steps", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())["results"]
    groups = report["ms_per_step"]
    assert groups["convolution forward"] > 0 and groups["convolution backward"] > 0
    assert groups["batch norm"] > 0 and groups["element-wise and copies"] > 0
    assert sum(report["ms_per_step_by_op"].values()) == pytest.approx(sum(groups.values()))
    assert report["rates"]["convolution backward GFLOP/s"] > 0
    assert "--amp (bfloat16), channels_last" in result.stdout or "--amp (fp32), channels_last" in result.stdout
    assert "bfloat16 native" in result.stdout or "bfloat16 not native" in result.stdout  # the machine line says


def test_bench_pointwise_times_both_paths_and_counts_the_matmul_layers(tmp_path):
    out = tmp_path / "pointwise.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pointwise.py"), "--sizes", "32,128",
                             "--batch", "2", "--steps", "1", "--repeats", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())["results"]["results"]
    assert set(results) == {"training step 32", "inference 32", "training step 128", "inference 128"}
    # 32x32 (maps 8x8 to 1x1): layer1's 7 1x1 convolutions, layer2's 9, layer3's 13, and layer4's two with 2x2
    # inputs (its other maps and the SE gates are 1x1). 128x128: layer3's 11 with 8x8 inputs, all 7 of layer4.
    assert results["training step 32"]["matmul_layers"] == 7 + 9 + 13 + 2
    assert results["training step 128"]["matmul_layers"] == 11 + 7
    for entry in results.values():
        assert entry["conv img/s"][0] > 0 and entry["matmul img/s"][0] > 0
    assert "matmul / convolution" in result.stdout


def test_bench_runner_times_every_candidate_on_the_same_images(tmp_path):
    images = tmp_path / "val_flat"
    make_val_folder(images, IMAGE_SPECS[:6])
    out = tmp_path / "runner.json"
    aipp = STANDARD_AIPP.read_text()  # upstream's config at 32 px: a 36x36 source, 32 crop at 2,2
    for key, value in (("src_image_size_w", 36), ("src_image_size_h", 36), ("load_start_pos_h", 2),
                       ("load_start_pos_w", 2), ("crop_size_w", 32), ("crop_size_h", 32)):
        aipp = re.sub(rf"({key}\s*:\s*)\d+", rf"\g<1>{value}", aipp)
    (tmp_path / "aipp32.config").write_text(aipp)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_runner.py"), "--images", str(images),
                             "--size", "32", "--aipp-config", str(tmp_path / "aipp32.config"), "--batches", "2",
                             "--repeats", "2", "--rounds", "2", "--app-seconds", "1", "--compare-regroup", "--int8",
                             "--calib-images", "2", "--workdir", str(tmp_path / "work"), "--json", str(out)],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(out.read_text())["results"]["batch 2"]
    assert len(figures["passes"]) == 2  # every candidate timed once per repeat, alternately
    backends = ["ORT", "OpenVINO"] if runner.openvino_available() else ["ORT"]
    keys = ["ORT default", "runner (ORT) e2e, --regroup=true", "torch eager fp32"]
    keys += [f"runner ({b}) {what}" for b in backends for what in ("e2e", "inference", "pure")]
    keys.append("runner (ORT) int8 e2e")  # the QOperator int8 build runs on ONNX Runtime only
    if runner.openvino_available():
        keys.append("benchmark_app (OpenVINO, f32)")
    for key in keys:
        assert figures[key] > 0, key
    # 6 images, 2 calibrated on: agreement over the other 4
    assert 0 <= figures["runner (ORT) int8 top-1 agreement % (4 images not calibrated on)"] <= 100
    assert "regroup x default" in result.stdout and "int8 x fp32 e2e" in result.stdout


def test_benchmark_work_folders_are_new_and_private_unless_given(tmp_path):
    """No fixed /tmp/bench_* names, where another local user could plant a symlink before the run."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import work_dir
    first, second = work_dir(None, "bench_train"), work_dir(None, "bench_train")
    try:
        assert first != second and first.name.startswith("bench_train_")
        assert (first.stat().st_mode & 0o777) == 0o700 and not first.is_symlink() and not any(first.iterdir())
    finally:
        first.rmdir()
        second.rmdir()
    assert work_dir(str(tmp_path / "given" / "w"), "bench_train") == tmp_path / "given" / "w"
    assert (tmp_path / "given" / "w").is_dir()
    for script in ("bench_train.py", "bench_data.py", "run_all.sh"):
        assert "/tmp/bench" not in (ROOT / "benchmarks" / script).read_text(), script


def test_measure_memory_sets_the_checks_estimate_beside_each_runs_real_peak(tmp_path):
    out = tmp_path / "memory.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "measure_memory.py"), "--cases",
                             "32:fp32:nchw:2,4", "eval:32:bf16:cl:2", "--workdir", str(tmp_path / "work"),
                             "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [(r["evaluate"], r["batch"], r["dtype"], r["channels_last"]) for r in rows] == \
        [(False, 2, "fp32", False), (False, 4, "fp32", False), (True, 2, "bf16", True)]
    for row in rows:  # a process with torch and the model loaded holds far more than 0.3 GiB
        assert 0.3 < row["estimate_gib"] < row["available_gib"] and 0.3 < row["measured_gib"] < 64
    assert "| train | 32 | fp32 | NCHW | 2 |" in result.stdout


def test_peak_memory_follows_the_whole_process_tree(tmp_path):
    """A parent holding little and a child holding 300 MB: the tree's peak counts the child."""
    child = "import time; block = bytearray(300 * 2 ** 20); time.sleep(1.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    out = tmp_path / "peak.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peak_memory.py"), "--json", str(out), "--",
                             sys.executable, "-c", parent], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["status"] == 0 and report["processes_seen"] >= 2
    assert 0.29 < report["peak_pss_gib"] < 1.0 and report["sum_of_own_peaks_gib"] > 0.29
    assert "peak memory of the process tree" in result.stderr


def test_bench_checkpoint_reports_the_submit_against_the_training_step(tmp_path):
    out = tmp_path / "checkpoint.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_checkpoint.py"), "--size", "32",
                             "--batch", "2", "--repeats", "1", "--workdir", str(tmp_path / "work"),
                             "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())["results"]
    assert 200 < report["state_mb"] < 250  # 1000-class weights, BatchNorm statistics and SGD momentum
    assert len(report["step_ms"]) == len(report["submit_ms"]) == len(report["write_ms"]) == 1
    assert (tmp_path / "work" / "checkpoint.pth.tar").is_file()
    assert "| submit on the training thread (221 MB to CPU memory) |" in result.stdout
