"""The GPU providers of the runner and the build, on a CPU: ONNX Runtime is made to behave as onnxruntime-gpu
does where CUDA's libraries are missing (it lists the CUDA and TensorRT providers, then a session starts on the
CPU), so that a fallback is caught and said, never silent."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import benchmark
from offline_helpers import run_tool
from seresnext import build, runner
from seresnext.output_formats import read_perf_file, read_pure_infer_perf_file

GPU_LISTED = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
REAL_SESSION = ort.InferenceSession


def tiny_model(path, batch: int | str = 2) -> str:
    """image [batch, 3, 8, 8] -> class [batch, 3]: a global average pool, enough for a session."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["class"])], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("class", TensorProto.FLOAT, [batch, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def fake_gpu_runtime(monkeypatch, running: list[str], device_options: dict | None = None) -> list:
    """Sessions that run on the CPU but report ``running`` as their providers; returns the list of the
    providers each session was asked for."""
    asked: list = []

    class Session:
        def __init__(self, model, sess_options=None, providers=None, **kwargs):
            asked.append(providers)
            self._real = REAL_SESSION(model, sess_options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return list(running)

        def get_provider_options(self):
            return dict(device_options or {})

        def __getattr__(self, name):
            return getattr(self._real, name)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_LISTED))
    return asked


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_an_explicit_gpu_provider_that_falls_back_to_the_cpu_is_one_error_line(tmp_path, monkeypatch, provider):
    model = tiny_model(tmp_path / "tiny_2.onnx")
    fake_gpu_runtime(monkeypatch, ["CPUExecutionProvider"])
    status, out, err = run_tool(benchmark, [f"-provider={provider}", f"-om_path={model}", "-batch_size=2",
                                            "-round=2", f"-result_dir={tmp_path / 'result'}"])
    assert status == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"benchmark.py: error: -provider={provider}: ONNX Runtime lists ")
    assert "could not start it, so the model would run on CPUExecutionProvider" in err
    assert not (tmp_path / "result").exists()  # no perf file that would pass for a GPU's


def test_tensorrt_on_another_device_than_device_id_is_an_error(tmp_path, monkeypatch):
    """TensorRT retries without its provider options when they fail, so on device 0."""
    model = tiny_model(tmp_path / "tiny_2.onnx")
    fake_gpu_runtime(monkeypatch, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                     {"TensorrtExecutionProvider": {"device_id": "0"}})
    status, _, err = run_tool(benchmark, ["-provider=tensorrt", "-device_id=1", f"-om_path={model}",
                                          "-batch_size=2", "-round=2", f"-result_dir={tmp_path / 'result'}"])
    assert status == 1 and err.strip() == ("benchmark.py: error: -provider=tensorrt -device_id=1: ONNX Runtime "
                                           "started TensorrtExecutionProvider on device 0, not on device 1")


@pytest.mark.parametrize("openvino", [False, True])
def test_auto_falls_back_with_one_warning_and_the_perf_files_name_what_ran(tmp_path, monkeypatch, openvino):
    if openvino and not runner.openvino_available():
        pytest.skip("openvino is not installed")
    monkeypatch.setattr(runner, "openvino_available", lambda: openvino)
    model = tiny_model(tmp_path / "tiny_2.onnx")
    asked = fake_gpu_runtime(monkeypatch, ["CPUExecutionProvider"])
    status, out, err = run_tool(benchmark, [f"-om_path={model}", "-batch_size=2", "-round=2",
                                            f"-result_dir={tmp_path / 'result'}"])
    assert status == 0, err
    assert asked[0][0] == ("CUDAExecutionProvider", {"device_id": 0})  # the GPU was tried first
    ran = "OpenVINO CPU" if openvino else "CPUExecutionProvider"
    warnings = [line for line in err.splitlines() if line.startswith("[WARN]")]
    assert warnings == [f"[WARN] -provider=auto: running on {ran}, not on the GPU: ONNX Runtime lists "
                        f"CUDAExecutionProvider but could not start it, so the model would run on "
                        f"CPUExecutionProvider (the CUDA, cuDNN or TensorRT libraries it loads are missing or do not "
                        f"match it: its log above says which)"]
    perf = tmp_path / "result" / "PureInfer_perf_of_tiny_2_in_device_0.txt"
    assert perf.read_text().splitlines()[1] == f"[backend] provider: {ran}"
    assert read_pure_infer_perf_file(perf) > 0


def test_a_dataset_run_on_the_gpu_names_the_provider_and_device_in_the_perf_file(tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "tiny_2.onnx")
    fake_gpu_runtime(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"],
                     {"CUDAExecutionProvider": {"device_id": "1"}})
    rng = np.random.default_rng(0)
    lines = []
    for index in range(3):
        path = tmp_path / f"ILSVRC2012_val_{index + 1:08d}.bin"
        rng.standard_normal((3, 8, 8), dtype=np.float32).tofile(path)
        lines.append(f"{index} {path} 8 8\n")
    (tmp_path / "bin.info").write_text("".join(lines))
    status, out, err = run_tool(benchmark, ["-provider=cuda", "-device_id=1", f"-om_path={model}", "-batch_size=2",
                                            f"-input_text_path={tmp_path / 'bin.info'}", "-input_width=8",
                                            "-input_height=8", f"-result_dir={tmp_path / 'result'}"])
    assert status == 0 and "[WARN]" not in err, err
    assert "CUDAExecutionProvider (device 1)" in out
    perf = read_perf_file(tmp_path / "result" / "perf_vision_batchsize_2_device_1.txt")
    assert perf["backend"] == {"provider": "CUDAExecutionProvider", "device": 1}
    assert perf["images"] == {"processed": 3, "skipped": 0, "failed": 0}


def test_a_cuda_build_that_falls_back_to_the_cpu_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "tiny.onnx", batch="N")
    fake_gpu_runtime(monkeypatch, ["CPUExecutionProvider"])
    with pytest.raises(build.BuildError, match=r"^--target=cuda: ONNX Runtime lists CUDAExecutionProvider but could "
                                               r"not start it, so the model would run on CPUExecutionProvider"):
        build.main([f"--model={model}", f"--output={tmp_path / 'tiny_cuda_2'}", "--input_shape=image:2,3,8,8",
                    "--target=cuda"])
    assert not (tmp_path / "tiny_cuda_2.onnx").exists()


def test_a_cuda_build_is_verified_with_tf32_off(tmp_path, monkeypatch):
    """ONNX Runtime's CUDA provider runs convolutions in TF32 by default: the float32 tolerance would reject a
    correct build."""
    model = tiny_model(tmp_path / "tiny.onnx", batch="N")
    asked = fake_gpu_runtime(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    build.main([f"--model={model}", f"--output={tmp_path / 'tiny_cuda_2'}", "--input_shape=image:2,3,8,8",
                "--target=cuda"])
    assert (tmp_path / "tiny_cuda_2.onnx").is_file()
    assert len(asked) == 3  # the optimization, then the source and the build on the same batch
    assert all(providers == [("CUDAExecutionProvider", {"use_tf32": 0})] for providers in asked), asked
