"""The runner's backends: a loaded model behind one ``run(batch)``, on ONNX Runtime (CPU, CUDA, TensorRT),
OpenVINO (CPU, throughput streams) or Ascend's runtime (``.om``), and the check that ONNX Runtime really started
the provider asked for. Which backend a run gets is :func:`seresnext.runner.open_backend`'s choice.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

from .errors import first_line
from .runner_options import ProviderNotStarted, RunnerError

__all__ = ["Backend", "OrtBackend", "OpenVinoBackend", "AscendBackend", "provider_problem", "PROVIDERS",
           "CUDA_OPTIONS", "OM_HELP"]

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
"""``-provider`` values that run on ONNX Runtime; ``openvino`` runs on OpenVINO (CPU), ``auto`` picks."""
CUDA_OPTIONS = {"use_tf32": 0}
"""CUDA provider options where outputs are compared with float32 references (the build's verification): ONNX
Runtime's CUDA provider runs convolutions in TF32 by default, about 1e-3 relative error."""
OM_HELP = ("{path} is an Ascend offline model (.om); running it needs Ascend's runtime (CANN with the "
           "ais_bench Python package: `from ais_bench.infer.interface import InferSession`), which is not "
           "installed here. On this machine build the ONNX equivalent instead: `bash se_resnext50_32x4d_atc.sh` "
           "(without atc on the PATH it writes seresnext50_32x4d_16.onnx and seresnext50_32x4d_aipp_16.onnx) "
           "and pass -om_path=seresnext50_32x4d_16.onnx.")



class Backend:
    """A loaded model: one input, outputs as numpy arrays. ``run`` may be called from ``parallel_requests``
    threads at once."""

    input_name: str
    input_shape: list[int | None]  # None: dynamic
    input_dtype: np.dtype
    metadata: dict[str, str]
    description: str
    parallel_requests: int = 1
    provider: str = ""  # what really runs the model, for the perf file's [backend] line (empty: not known)
    provider_device: int | None = None  # its device index, on a GPU or NPU
    warning: str = ""  # -provider=auto fell back from a better provider: one line saying which runs and why

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OrtBackend(Backend):
    """ONNX Runtime on the CPU, CUDA or TensorRT; layout optimizations run here (they are hardware
    specific), the rest were saved by the build step."""

    def __init__(self, path: str, provider: str = "auto", device_id: int = 0, threads: int = 0):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if provider == "auto":
            chosen = "cuda" if PROVIDERS["cuda"] in available else "cpu"
        elif provider in PROVIDERS:
            chosen = provider
            if PROVIDERS[chosen] not in available:
                raise RunnerError(f"-provider={provider}: this ONNX Runtime has no {PROVIDERS[chosen]} (it has "
                                  f"{', '.join(available)}); install onnxruntime-gpu for cuda / tensorrt")
        else:
            raise RunnerError(f"-provider={provider}: expected auto, {', '.join(PROVIDERS)}, openvino")
        providers: list = []
        if chosen == "tensorrt":
            providers.append((PROVIDERS["tensorrt"], {"device_id": device_id}))
        if chosen in ("tensorrt", "cuda"):
            providers.append((PROVIDERS["cuda"], {"device_id": device_id}))
        providers.append(PROVIDERS["cpu"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            first = first_line(exc)
            raise RunnerError(f"-om_path={path}: ONNX Runtime cannot load it ({first})") from None
        on_gpu = chosen in ("cuda", "tensorrt")
        problem = provider_problem(self.session, PROVIDERS[chosen], device_id if on_gpu else None)
        if problem:
            device = f" -device_id={device_id}" if on_gpu and device_id else ""
            raise ProviderNotStarted(f"-provider={provider}{device}", problem)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise RunnerError(f"-om_path={path}: the runner feeds one input, the model has {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_shape = [d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape]
        self.input_dtype = np.dtype({"tensor(float)": np.float32, "tensor(uint8)": np.uint8}.get(
            inputs[0].type, np.float32))
        if inputs[0].type not in ("tensor(float)", "tensor(uint8)"):
            raise RunnerError(f"-om_path={path}: input {self.input_name} is {inputs[0].type}; expected float "
                              f"(NCHW images) or uint8 (AIPP)")
        self.output_name = self.session.get_outputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        used = self.session.get_providers()[0]
        self.provider, self.provider_device = used, device_id if on_gpu else None
        threads_text = f", {threads} intra-op threads" if threads > 0 else ""
        device_text = f" (device {device_id})" if on_gpu else ""
        self.description = f"ONNX Runtime {ort.__version__} {used}{device_text}{threads_text}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:  # onnxruntime's own exception types
            first = first_line(exc)
            raise RunnerError(f"ONNX Runtime failed on a batch of shape {list(batch.shape)}: {first}") from None


def provider_problem(session, wanted: str, device_id: int | None = None) -> str | None:
    """Why an ONNX Runtime ``session`` does not run on ``wanted`` (on device ``device_id``), or None when it does.

    ``get_available_providers()`` lists what this ONNX Runtime was built with: onnxruntime-gpu lists CUDA and
    TensorRT even where their libraries are missing, and a session then falls back to the next provider with
    only an error in the log (for TensorRT it retries without the provider options, so on device 0).
    """
    running = list(session.get_providers())
    if not running or running[0] != wanted:
        return (f"ONNX Runtime lists {wanted} but could not start it, so the model would run on "
                f"{running[0] if running else 'no provider'} (the CUDA, cuDNN or TensorRT libraries it loads are "
                f"missing or do not match it: its log above says which)")
    if device_id is not None:
        options = getattr(session, "get_provider_options", dict)().get(wanted, {})
        actual = options.get("device_id")
        if actual is not None and str(actual) != str(device_id):
            return f"ONNX Runtime started {wanted} on device {actual}, not on device {device_id}"
    return None

def _openvino_reason(exc: Exception) -> str:
    """The line of an OpenVINO error that says what failed: the first unconverted operator when it lists them
    (e.g. the ONNX Runtime contrib operators of an int8 QOperator build), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    failed = [line[3:].split(" with a message")[0] for line in lines if line.startswith("-- ")]
    if failed:
        return f"cannot convert {', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''}"
    return lines[0] if lines else exc.__class__.__name__


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU, in float32, with its throughput streams: each stream owns some cores and runs one
    request, and the runner keeps one batch in flight per stream (as OpenVINO's ``benchmark_app -hint
    throughput`` does).

    float32 is asked for explicitly: on a CPU with bfloat16 OpenVINO would otherwise run bfloat16, and the
    dumps must be the model's float32 outputs (what ONNX Runtime and the Ascend runtime give).
    """

    def __init__(self, path: str, threads: int = 0):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            model = core.read_model(path)
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise RunnerError(f"-om_path={path}: OpenVINO cannot load it ({_openvino_reason(exc)})") from None
        if len(self.compiled.inputs) != 1:
            raise RunnerError(f"-om_path={path}: the runner feeds one input, the model has "
                              f"{len(self.compiled.inputs)}")
        port = self.compiled.input(0)
        self.input_name = port.get_any_name()
        self.input_shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        element = port.get_element_type()
        if element not in (ov.Type.f32, ov.Type.u8):
            raise RunnerError(f"-om_path={path}: input {self.input_name} is {element}; expected float (NCHW "
                              f"images) or uint8 (AIPP)")
        self.input_dtype = np.dtype(np.uint8 if element == ov.Type.u8 else np.float32)
        self.output = self.compiled.output(0)
        self.metadata = ({str(k): v.astype(str) for k, v in model.get_rt_info(["framework"]).astype(dict).items()}
                         if model.has_rt_info(["framework"]) else {})  # an ONNX model's metadata_props
        self.parallel_requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests: queue.Queue = queue.Queue()
        # One Python thread at a time inside OpenVINO's API; only wait() (which releases the GIL) runs unlocked.
        # Several threads calling InferRequest.infer() at once deadlocked here under load (py-spy: two requests
        # copying their inputs, nobody running), the pattern OpenVINO's asynchronous API exists to avoid.
        self._api = threading.Lock()
        for _ in range(self.parallel_requests):
            self._requests.put(self.compiled.create_infer_request())
        streams = self.compiled.get_property("NUM_STREAMS")
        self.provider = "OpenVINO CPU"
        self.description = (f"OpenVINO {ov.get_version().split('-')[0]} CPU, float32, {streams} stream(s), "
                            f"{self.compiled.get_property('INFERENCE_NUM_THREADS')} threads")

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = self._requests.get()
        try:
            with self._api:
                request.start_async({0: batch}, share_inputs=False)
            request.wait()
            with self._api:
                return np.array(request.get_tensor(self.output).data, copy=True)  # the request reuses its buffer
        except Exception as exc:  # OpenVINO's own exception types
            first = first_line(exc)
            raise RunnerError(f"OpenVINO failed on a batch of shape {list(batch.shape)}: {first}") from None
        finally:
            self._requests.put(request)


class AscendBackend(Backend):
    """An ``.om`` through Ascend's runtime (ais_bench's InferSession), when CANN is installed."""

    def __init__(self, path: str, device_id: int = 0):
        try:
            from ais_bench.infer.interface import InferSession
        except ImportError:
            raise RunnerError(OM_HELP.format(path=path)) from None
        self.session = InferSession(device_id, path)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = [d if d > 0 else None for d in model_input.shape]
        self.input_dtype = np.dtype(np.uint8 if "uint8" in str(model_input.datatype).lower() else np.float32)
        self.metadata = {}
        self.description = f"Ascend runtime (ais_bench), device {device_id}"
        self.provider, self.provider_device = "Ascend runtime", device_id

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.infer([batch])[0])
