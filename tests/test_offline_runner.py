"""The model build (atc script / seresnext.build) and the runner (benchmark.py) on a small-input model.

The model is the real SE-ResNeXt50_32x4d exported at 64x64 (it pools adaptively), so every step runs the
real graph in seconds; the AIPP config is the standard one scaled down (72x72 source, 64 crop at 4,4).
"""
import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import benchmark
from offline_helpers import (PYTHON, ROOT, STANDARD_AIPP, colour_class_image, env_with_repo, make_val_folder,
                             probe_trained_model, run_tool)
from seresnext import build, runner
from seresnext.aipp import apply_aipp_reference, encode_source, insert_aipp, load_aipp_config
from seresnext.export import export_onnx
from seresnext.formats import write_bin, write_info
from seresnext.output_formats import read_dump, read_perf_file
from seresnext.preprocess import load_rgb

SIZE, SOURCE = 64, 72
PERF_LINE = {
    "e2e": r"\[e2e\] throughputRate: [\d.e+-]+, latency: [\d.e+-]+",
    "data read": r"\[data read\] throughputRate: [\d.e+-]+, moduleLatency: [\d.e+-]+",
    "preprocess": r"\[preprocess\] throughputRate: [\d.e+-]+, moduleLatency: [\d.e+-]+",
    "infer": r"\[infer\] throughputRate: [\d.e+-]+, Interface throughputRate: [\d.e+-]+, moduleLatency: [\d.e+-]+",
    "post": r"\[post\] throughputRate: [\d.e+-]+, moduleLatency: [\d.e+-]+",
}


def small_aipp_text() -> str:
    """The standard config for a 72x72 source and a 64x64 model (crop at 4,4: the same 0.875 ratio)."""
    text = STANDARD_AIPP.read_text()
    for old, new in (("src_image_size_w : 256", f"src_image_size_w : {SOURCE}"),
                     ("src_image_size_h : 256", f"src_image_size_h : {SOURCE}"),
                     ("load_start_pos_h : 16", "load_start_pos_h : 4"),
                     ("load_start_pos_w : 16", "load_start_pos_w : 4"),
                     ("crop_size_w : 224", f"crop_size_w : {SIZE}"), ("crop_size_h: 224", f"crop_size_h: {SIZE}")):
        assert old in text
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """tiny.onnx (dynamic batch, 4 colour classes, head fitted on train images), its static batch-4 build,
    its AIPP build, the small AIPP config, and train/ and val/ images."""
    root = tmp_path_factory.mktemp("offline")
    train = [(colour_class_image(root / "train" / f"t{i}.jpg", i % 4, seed=i), i % 4) for i in range(80)]
    for i in range(60):
        colour_class_image(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", i % 4, seed=1000 + i)
    (root / "val_label.txt").write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {i % 4}\n" for i in range(60)))
    export_onnx(probe_trained_model(train, resize=SOURCE, crop=SIZE), root / "tiny.onnx", input_name="image",
                output_name="class", batch_size=None, image_size=SIZE)
    (root / "aipp_small.config").write_text(small_aipp_text())
    shape = f"image:4,3,{SIZE},{SIZE}"
    build.main([f"--model={root / 'tiny.onnx'}", "--framework=5", f"--output={root / 'tiny_4'}",
                "--input_format=NCHW", f"--input_shape={shape}", "--log=info"])
    build.main([f"--model={root / 'tiny.onnx'}", "--framework=5", f"--output={root / 'tiny_aipp_4'}",
                "--input_format=NCHW", f"--input_shape={shape}", f"--insert_op_conf={root / 'aipp_small.config'}"])
    return root


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _bins(folder: Path, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((3, SIZE, SIZE), dtype=np.float32) for _ in range(count)]
    for index, array in enumerate(arrays, 1):
        write_bin(folder / f"ILSVRC2012_val_{index:08d}.bin", array)
    return arrays


def _run(tmp_path, *flags):
    return run_tool(benchmark, ["-model_type=vision", "-device_id=0", "-warmup=1", *flags,
                                f"-result_dir={tmp_path / 'result'}"])


def test_build_fixes_the_batch_saves_optimizations_and_records_them(work):
    model = onnx.load(work / "tiny_4.onnx")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 3, SIZE, SIZE]
    meta = json.loads({p.key: p.value for p in model.metadata_props}["seresnext.build"])
    assert (meta["precision"], meta["optimization"], meta["target"]) == ("fp32", "extended", "cpu")
    assert any(n.domain == "com.microsoft" for n in model.graph.node)  # ORT's fused ops, saved once
    aipp = onnx.load(work / "tiny_aipp_4.onnx")
    assert [d.dim_value for d in aipp.graph.input[0].type.tensor_type.shape.dim] == [4, SOURCE * 3 // 2, SOURCE]
    assert aipp.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def _grouped_convs(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """name -> (groups, input channels per group) of every grouped Conv."""
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            found[node.name] = (group, weights[node.input[1]][1])
    return found


def test_regroup_merges_small_groups_exactly_and_only_up_to_twice_the_flops(work):
    source = onnx.load(work / "tiny.onnx")
    before = _grouped_convs(source)
    assert sorted(set(before.values())) == [(32, 4), (32, 8), (32, 16), (32, 32)]  # layer1 .. layer4
    model = onnx.ModelProto()
    model.CopyFrom(source)
    assert build.regroup_convs(model, 16) == 4  # layer2 (8 per group -> 16); layer1 would cost 4x, left as is
    after = _grouped_convs(model)
    changed = {name for name in before if after[name] != before[name]}
    assert {after[name] for name in changed} == {(16, 16)}
    assert {before[name] for name in changed} == {(32, 8)}
    feed = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    cpu = ["CPUExecutionProvider"]
    expected = ort.InferenceSession(source.SerializeToString(), providers=cpu).run(None, {"image": feed})[0]
    actual = ort.InferenceSession(model.SerializeToString(), providers=cpu).run(None, {"image": feed})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    # an 8-channel block (AVX2) merges layer1's groups instead; a larger factor is a choice of the caller
    again = onnx.ModelProto()
    again.CopyFrom(source)
    assert build.regroup_convs(again, 8) == 3
    assert build.regroup_convs(again, 16, max_factor=4) == 7


def test_build_regroups_only_when_asked_and_only_fp32_on_the_cpu(work, tmp_path):
    meta = json.loads({p.key: p.value for p in onnx.load(work / "tiny_4.onnx").metadata_props}["seresnext.build"])
    assert meta["regrouped_convs"] == 0
    build.main([f"--model={work / 'tiny.onnx'}", f"--output={tmp_path / 'regrouped_4'}",
                "--input_shape=image:4,3,64,64", "--regroup"])  # the build's own check compares it with the source
    regrouped = onnx.load(tmp_path / "regrouped_4.onnx")
    meta = json.loads({p.key: p.value for p in regrouped.metadata_props}["seresnext.build"])
    assert meta["regrouped_convs"] == (4 if build.nchwc_block_size() == 16 else 3)
    with pytest.raises(build.BuildError, match=r"--regroup: only for fp32 on the CPU \(got --precision=int8"):
        build.main([f"--model={work / 'tiny.onnx'}", f"--output={tmp_path / 'x'}", "--input_shape=image:4,3,64,64",
                    "--regroup", "--precision=int8", f"--calib_dir={tmp_path}"])
    assert not (tmp_path / "x.onnx").exists()
    env = dict(os.environ, PATH="/usr/bin:/bin", PYTHON=str(Path(os.sys.executable)))
    result = subprocess.run(["bash", str(ROOT / "se_resnext50_32x4d_atc.sh"), f"--model={work / 'tiny.onnx'}",
                             "--batch_size=2", f"--image_size={SIZE}", f"--aipp_config={work / 'aipp_small.config'}",
                             f"--output_dir={tmp_path}", "--regroup=true"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("seresnext50_32x4d_2.onnx", "seresnext50_32x4d_aipp_2.onnx"):
        built = onnx.load(tmp_path / name)
        assert json.loads({p.key: p.value for p in built.metadata_props}["seresnext.build"])["regrouped_convs"] > 0
    result = subprocess.run(["bash", str(ROOT / "se_resnext50_32x4d_atc.sh"), f"--model={work / 'tiny.onnx'}",
                             "--regroup=yes"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "--regroup=yes: expected true or false" in result.stderr


def test_aipp_model_equals_reference_preprocessing_then_model(work):
    config = load_aipp_config(work / "aipp_small.config")
    source = np.random.default_rng(1).integers(0, 256, size=config.input_shape(4), dtype=np.uint8)
    with_aipp = _session(work / "tiny_aipp_4.onnx").run(None, {"image": source})[0]
    plain = _session(work / "tiny.onnx").run(None, {"image": apply_aipp_reference(config, source)})[0]
    assert np.abs(with_aipp - plain).max() < 1e-4


def test_aipp_crop_must_fit_the_model_input(work, tmp_path):
    config_path = tmp_path / "wrong.config"
    config_path.write_text(STANDARD_AIPP.read_text())  # hands 224x224 to a 64x64 model
    with pytest.raises(ValueError, match="hands the model 224x224 .* takes 64x64"):
        insert_aipp(onnx.load(work / "tiny.onnx"), load_aipp_config(config_path), "tiny.onnx")


BACKENDS = [pytest.param("cpu", id="onnxruntime"),
            pytest.param("openvino", id="openvino", marks=pytest.mark.skipif(not runner.openvino_available(),
                                                                             reason="openvino is not installed"))]


@pytest.mark.parametrize("provider", BACKENDS)
def test_bin_run_writes_one_dump_per_image_with_a_partial_last_batch(work, tmp_path, provider):
    arrays = _bins(tmp_path / "bins", 10)
    write_info(tmp_path / "bin.info", [(str(p), SIZE, SIZE) for p in sorted((tmp_path / "bins").iterdir())])
    status, out, err = _run(tmp_path, f"-provider={provider}", f"-om_path={work / 'tiny_4.onnx'}", "-batch_size=4",
                            f"-input_text_path={tmp_path / 'bin.info'}", f"-input_width={SIZE}",
                            f"-input_height={SIZE}", "-output_binary=false", "-useDvpp=false")
    assert status == 0, err
    dumps = sorted((tmp_path / "result" / "dumpOutput_device0").iterdir())
    assert [p.name for p in dumps] == [f"ILSVRC2012_val_{i:08d}_1.txt" for i in range(1, 11)]
    expected = _session(work / "tiny.onnx").run(None, {"image": np.stack(arrays)})[0]
    for row, path in enumerate(dumps):
        np.testing.assert_allclose(read_dump(path), expected[row], atol=1e-4)
    perf_path = tmp_path / "result" / "perf_vision_batchsize_4_device_0.txt"
    lines = perf_path.read_text().splitlines()
    assert len(lines) == 7  # upstream's five, then the image counts and the backend in the same form
    for line, pattern in zip(lines, PERF_LINE.values()):
        assert __import__("re").fullmatch(pattern, line), line
    assert lines[5] == "[images] processed: 10, skipped: 0, failed: 0"
    ran = "OpenVINO CPU" if provider == "openvino" else "CPUExecutionProvider"
    assert lines[6] == f"[backend] provider: {ran}"
    perf = read_perf_file(perf_path)
    assert perf["e2e"]["throughputRate"] > 0 and perf["infer"]["moduleLatency"] > 0
    assert perf["images"] == {"processed": 10, "skipped": 0, "failed": 0}
    assert perf["backend"] == {"provider": ran}
    assert "-----------------Performance Summary------------------" in out
    assert "[inference] throughputRate:" in out and "p50" in out and "p99" in out and "10 images" in out
    assert ("OpenVINO" if provider == "openvino" else "ONNX Runtime") in out


def test_binary_dumps_and_a_dynamic_batch_model(work, tmp_path):
    arrays = _bins(tmp_path / "bins", 5, seed=3)
    write_info(tmp_path / "bin.info", [(str(p), SIZE, SIZE) for p in sorted((tmp_path / "bins").iterdir())])
    status, _, err = _run(tmp_path, f"-om_path={work / 'tiny.onnx'}", "-batch_size=3",
                          f"-input_text_path={tmp_path / 'bin.info'}", f"-input_width={SIZE}",
                          f"-input_height={SIZE}", "-output_binary=true")
    assert status == 0, err
    dumps = sorted((tmp_path / "result" / "dumpOutput_device0").iterdir())
    assert [p.suffix for p in dumps] == [".bin"] * 5
    expected = _session(work / "tiny.onnx").run(None, {"image": np.stack(arrays)})[0]
    for row, path in enumerate(dumps):
        assert path.stat().st_size == 4 * 4
        np.testing.assert_allclose(read_dump(path), expected[row], atol=1e-4)
    assert (tmp_path / "result" / "perf_vision_batchsize_3_device_0.txt").is_file()


def test_bad_bin_and_missing_files_are_listed_and_the_rest_is_run(work, tmp_path):
    _bins(tmp_path / "bins", 6)
    (tmp_path / "bins" / "ILSVRC2012_val_00000003.bin").write_bytes(b"\0" * 100)
    paths = [str(p) for p in sorted((tmp_path / "bins").iterdir())] + [str(tmp_path / "bins" / "gone.bin")]
    write_info(tmp_path / "bin.info", [(p, SIZE, SIZE) for p in paths])
    status, _, err = _run(tmp_path, f"-om_path={work / 'tiny_4.onnx'}", "-batch_size=4",
                          f"-input_text_path={tmp_path / 'bin.info'}", f"-input_width={SIZE}",
                          f"-input_height={SIZE}")
    assert status == 1
    assert f"bin.info:3: {paths[2]}: 100 bytes, expected 49152" in err
    assert f"bin.info:7: {paths[6]}: no such file" in err
    assert "2 image(s) failed; 5 processed" in err
    names = sorted(p.name for p in (tmp_path / "result" / "dumpOutput_device0").iterdir())
    assert names == [f"ILSVRC2012_val_{i:08d}_1.txt" for i in (1, 2, 4, 5, 6)]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("provider", BACKENDS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_run_resumes_with_only_the_missing_images_and_the_dumps_of_a_straight_run(
        work, tmp_path, signum, provider):
    """Interrupted partway (Ctrl-C, or a kill that may leave a temporary), then -resume=true: only the images
    without a complete dump run (a dump cut short by a power loss counts as missing), the others are not
    touched, and the dump folder equals an uninterrupted run's byte for byte. On each backend (OpenVINO keeps
    several batches in flight: Ctrl-C lets them finish and writes them)."""
    count = 80
    _bins(tmp_path / "bins", count)
    write_info(tmp_path / "bin.info", [(str(p), SIZE, SIZE) for p in sorted((tmp_path / "bins").iterdir())])
    flags = [f"-provider={provider}", "-model_type=vision", f"-om_path={work / 'tiny_4.onnx'}", "-device_id=0",
             "-batch_size=4", f"-input_text_path={tmp_path / 'bin.info'}", f"-input_width={SIZE}",
             f"-input_height={SIZE}", "-loaders=1", "-prefetch=1",
             "-warmup=1"]  # OpenVINO: a batch in flight per stream
    status, _, err = run_tool(benchmark, [*flags, f"-result_dir={tmp_path / 'straight'}"])
    assert status == 0, err
    straight = folder_bytes(tmp_path / "straight" / "dumpOutput_device0")
    assert len(straight) == count

    dumps = tmp_path / "result" / "dumpOutput_device0"
    proc = subprocess.Popen([PYTHON, "benchmark.py", *flags, f"-result_dir={tmp_path / 'result'}", "-progress=false"],
                            cwd=ROOT, env=env_with_repo(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (dumps.is_dir() and len(list(dumps.glob("*_1.txt"))) >= 8):
        time.sleep(0.005)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    if signum == signal.SIGINT:
        assert proc.returncode == 130, out + err
        done = len(list(dumps.glob("*_1.txt")))
        assert err.strip().splitlines()[-1] == (f"benchmark.py: interrupted after {done} dump(s) in {dumps}, each "
                                                f"complete; rerun the same command with -resume=true to process "
                                                f"only the rest")
    else:
        assert proc.returncode == -signal.SIGKILL, out + err
        (dumps / ".ILSVRC2012_val_00000079_1.txt.k1ll3d_x.tmp").write_text("-1.5 2.25")  # a write cut short
        cut = sorted(dumps.glob("*_1.txt"))[2]  # a power loss before the data reached the disk
        cut.write_bytes(cut.read_bytes()[:100])
    complete = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dumps.glob("*_1.txt")
                if p.read_bytes() == straight[p.name]}
    assert 8 <= len(complete) < count, "the run was not interrupted partway"

    status, out, err = run_tool(benchmark, [*flags, f"-result_dir={tmp_path / 'result'}", "-resume=true"])
    assert status == 0, err
    skipped, processed = len(complete), count - len(complete)
    assert f"[INFO] resumed: {skipped} images skipped (their dumps were complete), {processed} processed" in out
    perf = (tmp_path / "result" / "perf_vision_batchsize_4_device_0.txt").read_text().splitlines()
    assert perf[5] == f"[images] processed: {processed}, skipped: {skipped}, failed: 0"
    assert {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name in complete
            for p in [dumps / name]} == complete  # not written again
    assert folder_bytes(dumps) == straight


@pytest.mark.parametrize("provider", BACKENDS)
def test_ais_bench_resume_continues_the_run_in_its_output_dirname(work, tmp_path, provider):
    _bins(tmp_path / "prep_bin", 10)
    flags = ["--provider", provider, "--model", str(work / "tiny_4.onnx"), "--input", str(tmp_path / "prep_bin"),
             "--output", str(tmp_path / "out"), "--outfmt", "NPY"]
    status, _, err = _ais(*flags, "--output_dirname", "straight")
    assert status == 0, err
    straight = folder_bytes(tmp_path / "out" / "straight")
    run = tmp_path / "out" / "run"
    run.mkdir()
    for name in sorted(straight)[:6]:  # what an interrupted run left: 6 dumps, one cut short, a temporary
        (run / name).write_bytes(straight[name])
    (run / sorted(straight)[5]).write_bytes(straight[sorted(straight)[5]][:90])
    (run / f".{sorted(straight)[6]}.abcd1234.tmp").write_bytes(b"\x93NUMPY")
    status, out, err = _ais(*flags, "--output_dirname", "run", "--resume", "true")
    assert status == 0, err
    backend = "OpenVINO" if provider == "openvino" else "ONNX Runtime"
    assert f"[INFO] 5 images, {backend}" in out and "[INFO] resumed: 5 images skipped" in out
    assert folder_bytes(run) == straight
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert len(summary["filesinfo"]) == 5  # what this run wrote
    status, _, err = _ais(*flags, "--resume", "true")
    assert status == 1 and "--resume continues the run in OUTPUT/<output_dirname>/: give --input, --output and " \
                           "--output_dirname" in err
    status, _, err = _ais(*flags[:-1], "BIN", "--output_dirname", "run", "--resume=true")
    assert status == 1 and (f"--resume=true: {run / sorted(straight)[0]} is not the dump this run writes for that "
                            f"image ({sorted(straight)[0][:-4]}.bin): another run with other output flags") in err


def _ais(*flags):
    return run_tool(benchmark, [*flags, "--progress=false"])


def test_ais_bench_options_write_its_layout_and_summary(work, tmp_path):
    arrays = _bins(tmp_path / "prep_bin", 10)
    out = tmp_path / "out"
    status, stdout, err = _ais("--model", str(work / "tiny_4.onnx"), "--input", str(tmp_path / "prep_bin"),
                               "--output", str(out), "--outfmt", "TXT")  # --batchsize: the model's 4
    assert status == 0, err
    runs = sorted(p.name for p in out.iterdir())
    assert len(runs) == 2 and __import__("re").fullmatch(r"\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d", runs[0])
    assert runs[1] == runs[0] + "_summary.json"
    dumps = sorted((out / runs[0]).iterdir())
    assert [p.name for p in dumps] == [f"ILSVRC2012_val_{i:08d}_0.txt" for i in range(1, 11)]
    expected = _session(work / "tiny.onnx").run(None, {"image": np.stack(arrays)})[0]
    for row, path in enumerate(dumps):
        np.testing.assert_allclose(read_dump(path), expected[row], atol=1e-4)
    summary = json.loads((out / runs[1]).read_text())
    times = summary["NPU_compute_time"]
    assert times["count"] == 3 == len(summary["npu_compute_time_list"])  # 10 images in batches of 4
    assert times["min"] <= times["median"] <= times["max"] and times["percentile(99%)"] <= times["max"]
    assert summary["throughput"] == pytest.approx(1000 * 4 / times["mean"])
    assert summary["filesinfo"]["9"]["outfiles"] == [str(dumps[9])]
    assert f"throughput 1000*batchsize.mean(4)/NPU_compute_time.mean({times['mean']}): " in stdout
    assert "[INFO] NPU_compute_time (ms): min = " in stdout

    labels = tmp_path / "val_label.txt"
    labels.write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {i % 4}\n" for i in range(1, 11)))
    status, _, err = _ais("--model", str(work / "tiny_4.onnx"), "--input", str(tmp_path / "prep_bin"),
                          "--output", str(out), "--output_dirname", "npy_run", "--outfmt", "NPY", "--loop", "2",
                          "--warmup_count", "0", "--batchsize", "4", "--device", "0")
    assert status == 0, err
    assert len(list((out / "npy_run").glob("*_0.npy"))) == 10
    assert json.loads((out / "npy_run_summary.json").read_text())["NPU_compute_time"]["count"] == 6  # loop 2
    from vision_metric_ImageNet import main as metric_main
    for folder, name in ((out / runs[0], "txt.json"), (out / "npy_run", "npy.json")):
        assert metric_main([str(folder), str(labels), str(tmp_path), name]) == 0
    assert (tmp_path / "txt.json").read_text() == (tmp_path / "npy.json").read_text()


def test_ais_bench_input_list_pure_inference_and_wrong_flags(work, tmp_path):
    _bins(tmp_path / "prep_bin", 3)
    files = ",".join(str(tmp_path / "prep_bin" / f"ILSVRC2012_val_{i:08d}.bin") for i in (3, 1))
    status, _, err = _ais("--model", str(work / "tiny_4.onnx"), "--input", files, "--output", str(tmp_path),
                          "--output_dirname", "two", "--outfmt", "BIN")
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["ILSVRC2012_val_00000001_0.bin",
                                                                    "ILSVRC2012_val_00000003_0.bin"]
    status, stdout, err = _ais("--model", str(work / "tiny_4.onnx"), "--loop", "3", "--output", str(tmp_path),
                               "--output_dirname", "pure")
    assert status == 0, err
    assert json.loads((tmp_path / "pure_summary.json").read_text())["NPU_compute_time"]["count"] == 3
    assert "throughput 1000*batchsize.mean(4)" in stdout
    for flags, message in (
            (["-batch_size=4"], "-batch_size is a benchmark.x86_64 option; with --model use ais_bench's"),
            (["--output_dirname", "x"], "--output_dirname names a folder under --output; give --output too"),
            (["--input", str(tmp_path / "nothing")], "--input=" + str(tmp_path / "nothing") + ": no such file"),
            (["--batchsize", "2", "--input", str(tmp_path / "prep_bin")], "--batchsize=2 but")):
        status, _, err = _ais("--model", str(work / "tiny_4.onnx"), *flags)
        assert status == 1 and message in err, err
    status, _, err = run_tool(benchmark, ["-om_path=x.onnx", "--loop", "2"])
    assert status == 1 and "--loop is an ais_bench option; use it with --model, not -om_path" in err


@pytest.mark.parametrize("flags, message", [
    (["-input_width=72"],
     r"-input_width=72 -input_height=64 do not match .*tiny_4.onnx: its input is image\[4, 3, 64, 64\]"),
    (["-batch_size=8"], r"-batch_size=8 but .*tiny_4.onnx has a static batch of 4"),
    (["-useDvpp=true"], r"-useDvpp=true needs a model with AIPP"),
    (["-useDvpp=maybe"], r"expected true or false"),
    (["-input_text_path={tmp}/bad.info"], r"bad.info:2: expected 'index path width height'"),
    (["-input_text_path={tmp}/none.info"], r"none.info: no such .info file"),
    (["-om_path={tmp}/model.om"], r"model.om is an Ascend offline model .* se_resnext50_32x4d_atc.sh"),
    (["-om_path={tmp}/missing.onnx"], r"-om_path=.*missing.onnx: no such file"),
    (["-provider=tensorrt"], r"-provider=tensorrt: this ONNX Runtime has no TensorrtExecutionProvider"),
    (["-model_type=nlp"], r"-model_type=nlp: only vision is supported"),
])
def test_flag_and_model_mismatches_are_clear_errors(work, tmp_path, flags, message):
    _bins(tmp_path / "bins", 1)
    write_info(tmp_path / "ok.info", [(str(tmp_path / "bins" / "ILSVRC2012_val_00000001.bin"), SIZE, SIZE)])
    (tmp_path / "bad.info").write_text(f"0 {tmp_path}/bins/ILSVRC2012_val_00000001.bin 64 64\n1 x.bin\n")
    (tmp_path / "model.om").write_bytes(b"om")
    base = {"-om_path": str(work / "tiny_4.onnx"), "-batch_size": "4", "-input_width": str(SIZE),
            "-input_height": str(SIZE), "-input_text_path": str(tmp_path / "ok.info")}
    for flag in flags:
        key, value = flag.split("=", 1)
        base[key] = value.format(tmp=tmp_path)
    status, _, err = _run(tmp_path, *[f"{k}={v}" for k, v in base.items()])
    assert status in (1, 2)
    assert __import__("re").search(message, err), err


def test_aipp_model_needs_dvpp_mode_and_its_source_size(work, tmp_path):
    make_val_folder(tmp_path / "val", [(90, 70, "RGB", "JPEG")])
    from get_info import main as get_info_main
    get_info_main(["jpg", str(tmp_path / "val"), str(tmp_path / "jpg.info")])
    common = [f"-om_path={work / 'tiny_aipp_4.onnx'}", "-batch_size=4", f"-input_text_path={tmp_path / 'jpg.info'}"]
    status, _, err = _run(tmp_path, *common, f"-input_width={SOURCE}", f"-input_height={SOURCE}", "-useDvpp=false")
    assert status == 1 and "has AIPP" in err and "-useDvpp=true" in err
    status, _, err = _run(tmp_path, *common, "-input_width=256", "-input_height=256", "-useDvpp=true")
    assert status == 1 and "its AIPP input is 72x72" in err


@pytest.mark.parametrize("provider", BACKENDS)
def test_dvpp_mode_decodes_resizes_and_feeds_the_aipp_model(work, tmp_path, provider):
    specs = [(120, 90, "RGB", "JPEG"), (80, 100, "L", "JPEG"), (100, 100, "CMYK", "JPEG"), (90, 90, "RGB", "PNG"),
             (72, 72, "RGB", "JPEG")]
    files = make_val_folder(tmp_path / "val", specs)
    (tmp_path / "val" / "ILSVRC2012_val_00000009.JPEG").write_text("not a jpeg")
    write_info(tmp_path / "jpg.info", [(str(p), 1, 1) for p in sorted((tmp_path / "val").iterdir())])
    status, _, err = _run(tmp_path, f"-provider={provider}", f"-om_path={work / 'tiny_aipp_4.onnx'}",
                          "-batch_size=4", f"-input_text_path={tmp_path / 'jpg.info'}", f"-input_width={SOURCE}",
                          f"-input_height={SOURCE}", "-useDvpp=true", "-output_binary=false")
    assert status == 1 and "jpg.info:6:" in err and "not an image" in err
    config = load_aipp_config(work / "aipp_small.config")
    sources = np.stack([encode_source(config, np.asarray(load_rgb(p).resize((SOURCE, SOURCE), Image.BILINEAR)))
                        for p in files] + [np.zeros(config.input_shape(1)[1:], np.uint8)] * 3)
    session = _session(work / "tiny_aipp_4.onnx")
    expected = np.concatenate([session.run(None, {"image": sources[i:i + 4]})[0] for i in (0, 4)])
    for row, path in enumerate(files):
        dump = tmp_path / "result" / "dumpOutput_device0" / (path.name.split(".")[0] + "_1.txt")
        np.testing.assert_allclose(read_dump(dump), expected[row], atol=1e-4)


def test_auto_runs_openvino_when_installed_and_onnx_runtime_otherwise(work, monkeypatch):
    options = runner.RunnerOptions(om_path=str(work / "tiny_4.onnx"))
    if runner.openvino_available():
        backend = runner.open_backend(options)
        assert isinstance(backend, runner.OpenVinoBackend) and backend.description.startswith("OpenVINO")
        assert json.loads(backend.metadata["seresnext.build"])["precision"] == "fp32"  # the ONNX metadata
    monkeypatch.setattr(runner, "openvino_available", lambda: False)
    assert isinstance(runner.open_backend(options), runner.OrtBackend)
    with pytest.raises(runner.RunnerError, match="-provider=openvino: the openvino package is not installed"):
        runner.open_backend(runner.RunnerOptions(om_path=str(work / "tiny_4.onnx"), provider="openvino"))


class SlowBackend(runner.Backend):
    """Sleeps per call and returns each image's first pixel, with up to 3 calls at once."""

    input_name, input_shape, input_dtype, metadata, description = "image", [2, 3, SIZE, SIZE], np.dtype(
        np.float32), {}, "slow test backend"
    parallel_requests = 3

    def __init__(self):
        import threading
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def run(self, batch):
        import time
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return batch[:, :4, 0, 0].copy()


def test_parallel_requests_run_batches_at_once_and_write_every_image_once(tmp_path):
    arrays = _bins(tmp_path / "bins", 11)
    write_info(tmp_path / "bin.info", [(str(p), SIZE, SIZE) for p in sorted((tmp_path / "bins").iterdir())])
    backend = SlowBackend()
    options = runner.RunnerOptions(om_path="slow", batch_size=2, input_text_path=str(tmp_path / "bin.info"),
                                   input_width=SIZE, input_height=SIZE, warmup=1,
                                   result_dir=str(tmp_path / "result"), prefetch=4)
    result = runner.run_dataset(options, backend)
    assert backend.most == 3 and result.images == 11 and not result.failed
    for index, array in enumerate(arrays, 1):
        dump = tmp_path / "result" / "dumpOutput_device0" / f"ILSVRC2012_val_{index:08d}_1.txt"
        np.testing.assert_allclose(read_dump(dump), array[:, 0, 0], atol=1e-6)


def test_busy_seconds_count_overlapping_calls_once():
    assert runner._busy_seconds([(0, 1), (2, 3)]) == 2
    assert runner._busy_seconds([(0, 2), (1, 3), (1.5, 2.5), (5, 6)]) == 4
    assert runner._busy_seconds([]) == 0


def test_pure_inference_mode_reports_model_throughput(work, tmp_path):
    # as benchmark.x86_64 -round=N: no input sizes given, the model's own are used (SIZE is not the default 224)
    status, out, err = _run(tmp_path, "-round=3", f"-om_path={work / 'tiny_4.onnx'}", "-batch_size=4")
    assert status == 0, err
    assert out.count("[INFO] Dataset number:") == 3 and "ave_throughputRate:" in out
    text = (tmp_path / "result" / "PureInfer_perf_of_tiny_4_in_device_0.txt").read_text()
    assert __import__("re").fullmatch(r"ave_throughputRate = [\d.]+samples/s, ave_latency = [\d.]+ms\n"
                                      r"\[backend\] provider: (OpenVINO CPU|CPUExecutionProvider)\n", text), text


def test_atc_script_builds_both_onnx_models_without_atc(work, tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin", PYTHON=str(Path(os.sys.executable)))
    result = subprocess.run(
        ["bash", str(ROOT / "se_resnext50_32x4d_atc.sh"), f"--model={work / 'tiny.onnx'}", "--batch_size=2",
         f"--image_size={SIZE}", f"--aipp_config={work / 'aipp_small.config'}", f"--output_dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    binary = onnx.load(tmp_path / "seresnext50_32x4d_2.onnx")
    aipp = onnx.load(tmp_path / "seresnext50_32x4d_aipp_2.onnx")
    assert [d.dim_value for d in binary.graph.input[0].type.tensor_type.shape.dim] == [2, 3, SIZE, SIZE]
    assert [d.dim_value for d in aipp.graph.input[0].type.tensor_type.shape.dim] == [2, SOURCE * 3 // 2, SOURCE]
    assert "atc not used" in result.stdout


def _graph_with_input(path: Path, name: str, dims: list) -> Path:
    """A one-node ONNX model whose input is ``name`` of ``dims`` (what the atc script reads from a graph)."""
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", [name], ["out"])], "g",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), path)
    return path


def test_atc_script_runs_upstreams_atc_commands_with_the_graphs_input_when_atc_is_installed(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "atc").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/atc_calls\n')
    (bin_dir / "atc").chmod(0o755)
    _graph_with_input(tmp_path / "se_resnext50_32x4d.onnx", "image", ["-1", 3, 224, 224])  # seresnext50_pth2onnx.py's
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", PYTHON=os.sys.executable)
    result = subprocess.run(["bash", str(ROOT / "se_resnext50_32x4d_atc.sh")], cwd=tmp_path, capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "atc_calls").read_text().splitlines()
    common = ("--model=./se_resnext50_32x4d.onnx --framework=5 --output=./seresnext50_32x4d{} "
              "--input_format=NCHW --input_shape=image:16,3,224,224 --log=info --soc_version=Ascend310")
    assert calls == [common.format("_16"),
                     common.format("_aipp_16") + f" --insert_op_conf={ROOT / 'aipp_se_resnext50_32x4d_pth.config'}"]
    # pthtar2onnx.py's model: input actual_input_1, static batch 16, here at 64 px
    _graph_with_input(tmp_path / "se_resnext50_gpu8p.onnx", "actual_input_1", [16, 3, 64, 64])
    result = subprocess.run(["bash", str(ROOT / "se_resnext50_32x4d_atc.sh"), "--model=se_resnext50_gpu8p.onnx",
                             "--batch_size=4", "--output_dir=om"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--input_shape=actual_input_1:4,3,64,64" in (tmp_path / "atc_calls").read_text().splitlines()[-1]
    for flag, message in (("--image_size=224", "--image_size=224 but se_resnext50_gpu8p.onnx takes "
                                               "actual_input_1[16, 3, 64, 64]"),
                          ("--input_name=image", "--input_name=image: se_resnext50_gpu8p.onnx's input is "
                                                 "actual_input_1")):
        result = subprocess.run(["bash", str(ROOT / "se_resnext50_32x4d_atc.sh"), "--model=se_resnext50_gpu8p.onnx",
                                 flag], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_atc_script_reports_a_bad_aipp_field_with_its_line(work, tmp_path):
    (tmp_path / "bad.config").write_text((work / "aipp_small.config").read_text().replace("crop: true", "crop: yes"))
    env = dict(os.environ, PATH="/usr/bin:/bin", PYTHON=str(Path(os.sys.executable)))
    result = subprocess.run(
        ["bash", str(ROOT / "se_resnext50_32x4d_atc.sh"), f"--model={work / 'tiny.onnx'}", "--batch_size=2",
         f"--image_size={SIZE}", f"--aipp_config={tmp_path / 'bad.config'}", f"--output_dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    assert "bad.config:8: crop must be true or false, got 'yes'" in result.stderr


def test_build_rejects_a_shape_the_model_does_not_take(work, tmp_path):
    with pytest.raises(build.BuildError, match=r"image:4,3,224,224 does not match .* input image\['-1', 3, 64, 64\]"):
        build.main([f"--model={work / 'tiny.onnx'}", f"--output={tmp_path / 'x'}", "--input_shape=image:4,3,224,224"])
    with pytest.raises(build.BuildError, match=r"has no input 'input'"):
        build.main([f"--model={work / 'tiny.onnx'}", f"--output={tmp_path / 'x'}", "--input_shape=input:4,3,64,64"])
    with pytest.raises(build.BuildError, match=r"--input_shape='image': expected 'name:N,C,H,W'"):
        build.main([f"--model={work / 'tiny.onnx'}", f"--output={tmp_path / 'x'}", "--input_shape=image"])
    assert not list(tmp_path.iterdir())


def test_int8_build_is_calibrated_on_bins_and_runs(work, tmp_path):
    _bins(tmp_path / "calib", 8, seed=5)
    build.main([f"--model={work / 'tiny.onnx'}", f"--output={tmp_path / 'tiny_int8_4'}",
                "--input_shape=image:4,3,64,64", "--precision=int8",
                f"--calib_dir={tmp_path / 'calib'}", "--calib_count=8"])
    model = onnx.load(tmp_path / "tiny_int8_4.onnx")
    assert json.loads({p.key: p.value for p in model.metadata_props}["seresnext.build"])["precision"] == "int8"
    assert any("QLinear" in n.op_type or "QuantizeLinear" in n.op_type for n in model.graph.node)
    feed = np.random.default_rng(9).standard_normal((4, 3, SIZE, SIZE), dtype=np.float32)
    assert _session(tmp_path / "tiny_int8_4.onnx").run(None, {"image": feed})[0].shape == (4, 4)
    if runner.openvino_available():  # OpenVINO cannot convert a QOperator build: auto runs it on ONNX Runtime
        options = runner.RunnerOptions(om_path=str(tmp_path / "tiny_int8_4.onnx"))
        backend = runner.open_backend(options)
        assert isinstance(backend, runner.OrtBackend)
        assert "(-provider=auto: OpenVINO cannot load it (cannot convert QLinearConv" in backend.description
        with pytest.raises(runner.RunnerError, match=r"tiny_int8_4.onnx: OpenVINO cannot load it \(cannot convert "):
            runner.open_backend(dataclasses.replace(options, provider="openvino"))
    with pytest.raises(build.BuildError, match="--precision=int8 needs --calib_dir"):
        build.main([f"--model={work / 'tiny.onnx'}", f"--output={tmp_path / 'y'}", "--input_shape=image:4,3,64,64",
                    "--precision=int8"])


def test_chain_bin_and_aipp_paths_agree_on_top1(work, tmp_path, monkeypatch):
    """The README chain at 64x64: preprocess -> get_info -> runner (both modes) -> metric. With a model
    whose classes are colours, the DVPP + AIPP path must agree with the .bin path on >= 95% of images (a
    wrong swap or matrix would not), as the seed's JPEG path costs about 0.7 points of top-1."""
    import get_info
    import vision_metric_ImageNet
    from seresnext.preprocess import preprocess_image

    monkeypatch.chdir(tmp_path)
    for path in sorted((work / "val").iterdir()):  # upstream's algorithm at this model's 72 -> 64 sizes
        write_bin(tmp_path / "prep_bin" / (path.name.split(".")[0] + ".bin"),
                  preprocess_image(path, resize=SOURCE, crop=SIZE))
    assert run_tool(get_info, ["bin", "./prep_bin", "./val.info", SIZE, SIZE])[0] == 0
    assert run_tool(get_info, ["jpg", work / "val", "./jpg.info"])[0] == 0
    top1 = {}
    for mode, model, info, size in (("bin", "tiny_4", "val.info", SIZE), ("jpg", "tiny_aipp_4", "jpg.info", SOURCE)):
        status, _, err = run_tool(benchmark, [f"-om_path={work / model}.onnx", "-batch_size=4", "-warmup=0",
                                              f"-input_text_path={info}", f"-input_width={size}",
                                              f"-input_height={size}", f"-useDvpp={mode == 'jpg'}",
                                              f"-result_dir=result_{mode}"])
        assert status == 0, err
        status, out, err = run_tool(vision_metric_ImageNet, [f"result_{mode}/dumpOutput_device0",
                                                             work / "val_label.txt", ".", f"{mode}.json"])
        assert status == 0, err
        top1[mode] = {p.name: int(read_dump(p).argmax()) for p in Path(f"result_{mode}/dumpOutput_device0").iterdir()}
        accuracy = json.loads(Path(f"{mode}.json").read_text())["value"][2]["value"]
        assert float(accuracy.rstrip("%")) >= 75.0, (mode, accuracy)  # 4 classes: chance is 25%
    assert len(top1["bin"]) == len(top1["jpg"]) == 60
    agreement = np.mean([top1["bin"][name] == top1["jpg"][name] for name in top1["bin"]])
    assert agreement >= 0.95, agreement


def test_profile_ort_reports_kernel_time_per_operator_for_each_build(work, tmp_path):
    out = tmp_path / "profile.json"
    result = subprocess.run([os.sys.executable, str(ROOT / "benchmarks" / "profile_ort.py"), str(work / "tiny_4.onnx"),
                             str(work / "tiny_aipp_4.onnx"), "--runs", "1", "--rounds", "2", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())["results"]["models"]
    for model in ("tiny_4.onnx", "tiny_aipp_4.onnx"):
        ops = figures[str(work / model)]
        assert ops["total"] == pytest.approx(sum(v for k, v in ops.items() if k != "total"))
        assert ops["Conv"] > 0 and ops["total"] > ops["Conv"]
    assert "| total |" in result.stdout
    result = subprocess.run([os.sys.executable, str(ROOT / "benchmarks" / "profile_ort.py"), str(work / "tiny.onnx"),
                             "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode != 0 and "is not static; profile a build" in result.stderr
