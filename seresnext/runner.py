"""The offline runner: what Ascend's closed ``benchmark.x86_64`` did, on ONNX Runtime or OpenVINO (or Ascend's
runtime for ``.om`` files).

It reads a ``.info`` list, feeds the model in batches and writes one dump per image plus upstream's perf
file. The work is a three-stage pipeline so that reading and preprocessing overlap with inference:

* loader threads read each file and turn it into the model's input (a ``.bin`` as is; with DVPP
  emulation a JPEG is decoded, resized to exactly ``-input_width`` x ``-input_height`` (aspect ratio not
  kept, as DVPP) and encoded as the AIPP config expects, e.g. YUV420SP);
* the model runs one batch after the other (``prefetch`` batches are prepared ahead), or as many batches at
  once as the backend has parallel requests (OpenVINO's throughput streams, each on its own cores);
* a writer thread writes the dumps atomically.

Warm-up batches run before the clock starts. A last partial batch is padded with zeros up to a static
batch size (or run as is with a dynamic one) and only the real images are written. Files that cannot be
read are listed in the result, never stop the run, and make the exit status 1.

An interrupted run can be continued: Ctrl-C lets the batches already inferred be written, a kill leaves only
whole dumps (each is written to a temporary and renamed; the next run removes the temporaries), and
``resume`` (``-resume=true``) skips the images whose dump is complete.
"""
from __future__ import annotations

import collections
import functools
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from .aipp_config import AippConfig, config_from_metadata
from .aipp_graph import encode_source
from .errors import first_line
from .formats import (DUMP_SUFFIX, FormatError, InfoEntry, bin_from_bytes, npy_from_bytes, PerfStats, dump_file_name,
                      dump_is_complete, parse_dump_name, perf_file_name, perf_lines, pure_infer_perf_file_name,
                      pure_infer_summary, read_info, remove_temporaries, write_dump, write_perf_file,
                      write_pure_infer_perf_file, list_dumps)
from .info import InfoError, list_files

__all__ = ["RunnerError", "RunInterrupted", "RunnerOptions", "RunResult", "Backend", "OrtBackend", "OpenVinoBackend",
           "AscendBackend", "open_backend", "openvino_available", "run_dataset", "run_pure_inference",
           "entries_from_inputs", "resume_line", "provider_problem", "ProviderNotStarted", "OM_HELP", "PROVIDERS",
           "CUDA_OPTIONS"]

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


class RunnerError(ValueError):
    """A flag, model or input the runner cannot use; the message names the flag or the file."""


class ProviderNotStarted(RunnerError):
    """ONNX Runtime listed the provider asked for, but the session runs on another (see :func:`provider_problem`);
    ``reason`` says so without the flags."""

    def __init__(self, flags: str, reason: str):
        super().__init__(f"{flags}: {reason}")
        self.reason = reason


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a dataset run after ``written`` dumps, each complete (the batches already inferred were
    written first), so that ``-resume=true`` can continue it."""

    def __init__(self, written: int, dump_dir: Path | None):
        super().__init__(f"{written} dump(s) written")
        self.written, self.dump_dir = written, dump_dir


@dataclass(frozen=True)
class RunnerOptions:
    """The runner's settings: benchmark.x86_64's flags plus a few of ours (provider, threads, ...), and the
    output layout (benchmark.x86_64's ``result/dumpOutput_device<id>/<image>_1.txt`` and perf file by
    default; ais_bench's ``<output>/<run>/<image>_0.<fmt>`` with ``dump_dir``, ``dump_suffix="_0"``,
    ``dump_format`` and ``write_perf=False``)."""

    om_path: str
    batch_size: int = 1
    device_id: int = 0
    input_text_path: str | None = None
    input_width: int = 224
    input_height: int = 224
    output_binary: bool = False
    use_dvpp: bool = False
    model_type: str = "vision"
    rounds: int = 0
    provider: str = "auto"
    threads: int = 0
    warmup: int = 2
    loaders: int = 2
    prefetch: int = 2
    result_dir: str = "result"
    dump_dir: str | None = None  # default: <result_dir>/dumpOutput_device<device_id>
    dump_suffix: str = DUMP_SUFFIX
    dump_format: str | None = None  # txt, bin or npy; default: from output_binary
    save_outputs: bool = True
    write_perf: bool = True
    loop: int = 1  # model calls per batch, each timed (ais_bench's --loop)
    input_label: str | None = None  # how errors name the input list (default: input_text_path)
    resume: bool = False  # skip the images whose dump in dump_dir is already complete (-resume=true)


# ----------------------------------------------------------------------------------------------- backends
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


def openvino_available() -> bool:
    """True when the optional ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


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


def open_backend(options: RunnerOptions) -> Backend:
    path = options.om_path
    if not Path(path).is_file():
        raise RunnerError(f"-om_path={path}: no such file")
    if path.endswith(".om"):
        return AscendBackend(path, options.device_id)
    provider = options.provider
    fallback = ""
    if provider == "auto":  # a GPU first; on the CPU OpenVINO when installed (faster than ONNX Runtime here)
        import onnxruntime as ort
        if PROVIDERS["cuda"] in ort.get_available_providers():
            try:
                return OrtBackend(path, "cuda", options.device_id, options.threads)
            except ProviderNotStarted as exc:
                fallback = exc.reason
        provider = "openvino" if openvino_available() else "cpu"
    backend = _backend_for(path, provider, options)
    if fallback:
        backend.warning = f"-provider=auto: running on {backend.provider}, not on the GPU: {fallback}"
    return backend


def _backend_for(path: str, provider: str, options: RunnerOptions) -> Backend:
    """The backend of an explicit ``-provider``, or of ``auto`` on the CPU (OpenVINO when it can convert the
    model, else ONNX Runtime)."""
    if provider == "openvino":
        if not openvino_available():
            raise RunnerError("-provider=openvino: the openvino package is not installed (pip install openvino)")
        try:
            return OpenVinoBackend(path, options.threads)
        except RunnerError as exc:
            if options.provider != "auto":
                raise
            backend = OrtBackend(path, "cpu", options.device_id, options.threads)  # e.g. an int8 QOperator build
            backend.description += f" (-provider=auto: {str(exc).split(': ', 1)[1]})"
            return backend
    return OrtBackend(path, provider, options.device_id, options.threads)


# ----------------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class _Plan:
    batch: int  # images per model call
    static_batch: bool
    item_shape: tuple[int, ...]  # one image's input
    aipp: AippConfig | None


def _plan(backend: Backend, options: RunnerOptions, pure: bool = False) -> _Plan:
    """Check the flags against the model; errors name the flag and the model's real shape."""
    if options.model_type != "vision":
        raise RunnerError(f"-model_type={options.model_type}: only vision is supported")
    if options.batch_size < 1:
        raise RunnerError(f"-batch_size={options.batch_size}: must be at least 1")
    shape, model = backend.input_shape, options.om_path
    shape_text = "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    aipp = config_from_metadata(backend.metadata)
    if backend.input_dtype == np.uint8 and aipp is None and not isinstance(backend, AscendBackend):
        raise RunnerError(f"-om_path={model}: uint8 input {backend.input_name}{shape_text} but no AIPP config "
                          f"recorded in the model; build it with se_resnext50_32x4d_atc.sh")
    is_aipp = backend.input_dtype == np.uint8
    if not pure:
        if options.use_dvpp and not is_aipp:
            raise RunnerError(f"-useDvpp=true needs a model with AIPP (built with --insert_op_conf, e.g. "
                              f"seresnext50_32x4d_aipp_16.onnx); {model} takes float32 "
                              f"{backend.input_name}{shape_text}: use -useDvpp=false with .bin files")
        if not options.use_dvpp and is_aipp:
            raise RunnerError(f"{model} has AIPP (uint8 input {backend.input_name}{shape_text}): it takes "
                              f"decoded images, so run it with -useDvpp=true and a jpg .info")
    if shape[0] is not None and shape[0] != options.batch_size:
        raise RunnerError(f"-batch_size={options.batch_size} but {model} has a static batch of {shape[0]} "
                          f"(input {backend.input_name}{shape_text}); pass -batch_size={shape[0]} or build "
                          f"the model for batch {options.batch_size}")
    width, height = options.input_width, options.input_height
    if pure and aipp is not None:  # pure inference takes the sizes from the model, as benchmark.x86_64 -round does
        width, height = aipp.src_image_size_w, aipp.src_image_size_h
    elif pure and len(shape) == 4 and None not in (shape[2], shape[3]):
        height, width = shape[2], shape[3]
    if aipp is not None:
        if (aipp.src_image_size_w, aipp.src_image_size_h) != (width, height):
            raise RunnerError(f"-input_width={width} -input_height={height} do not match {model}: its AIPP "
                              f"input is {aipp.src_image_size_w}x{aipp.src_image_size_h} "
                              f"({backend.input_name}{shape_text})")
        item = tuple(aipp.input_shape(1)[1:])
    elif is_aipp:  # an .om with AIPP: the shape is all we know
        item = tuple(d or 0 for d in shape[1:])
    else:
        if len(shape) != 4 or shape[1] not in (3, None):
            raise RunnerError(f"{model}: input {backend.input_name}{shape_text} is not NCHW images")
        if (shape[2], shape[3]) != (height, width) and None not in (shape[2], shape[3]):
            raise RunnerError(f"-input_width={width} -input_height={height} do not match {model}: its input "
                              f"is {backend.input_name}{shape_text} (width {shape[3]}, height {shape[2]})")
        item = (3, height, width)
    return _Plan(options.batch_size, shape[0] is not None, item, aipp)


# ----------------------------------------------------------------------------------------------- loading
def _loader(plan: _Plan, use_dvpp: bool) -> Callable[[InfoEntry], tuple[np.ndarray, float, float]]:
    """entry -> (model input for one image, seconds reading, seconds preprocessing)."""
    def load_bin(entry: InfoEntry) -> tuple[np.ndarray, float, float]:
        started = time.perf_counter()
        data = Path(entry.path).read_bytes()
        read = time.perf_counter()
        decode = npy_from_bytes if entry.path.lower().endswith(".npy") else bin_from_bytes
        array = decode(data, plan.item_shape, entry.path)
        return array, read - started, time.perf_counter() - read

    def load_jpeg(entry: InfoEntry) -> tuple[np.ndarray, float, float]:
        from PIL import Image

        from .preprocess import load_rgb

        started = time.perf_counter()
        data = Path(entry.path).read_bytes()
        read = time.perf_counter()
        config = plan.aipp
        image = load_rgb(entry.path, data)
        size = (config.src_image_size_w, config.src_image_size_h)
        if image.size != size:
            image = image.resize(size, Image.BILINEAR)
        array = encode_source(config, np.asarray(image))
        return array, read - started, time.perf_counter() - read

    if use_dvpp and plan.aipp is None:
        raise RunnerError("-useDvpp=true with an .om: DVPP emulation needs the AIPP config recorded by the "
                          "ONNX build; run the .om with Ascend's benchmark tool instead")
    return load_jpeg if use_dvpp else load_bin


# ----------------------------------------------------------------------------------------------- running
@dataclass
class RunResult:
    """What a dataset run did and measured."""

    images: int
    failed: list[tuple[str, str]] = field(default_factory=list)  # (info line reference, reason)
    stats: PerfStats | None = None
    batch_latencies_ms: list[float] = field(default_factory=list)
    dump_dir: Path | None = None
    perf_file: Path | None = None
    stale_dumps: int = 0
    skipped: int = 0  # -resume=true: images whose dump was complete before this run
    backend: str = ""
    written: list[tuple[str, str]] = field(default_factory=list)  # (input file, dump file) per image


def _percentiles(values_ms: Sequence[float]) -> tuple[float, float, float]:
    if not values_ms:
        return 0.0, 0.0, 0.0
    p50, p90, p99 = np.percentile(np.asarray(values_ms), [50, 90, 99])
    return float(p50), float(p90), float(p99)


def _warm_up(backend: Backend, plan: _Plan, rounds: int) -> None:
    """``rounds`` calls before the clock starts, and at least one on each of the backend's parallel requests."""
    if rounds < 1:
        return
    feed = np.zeros((plan.batch, *plan.item_shape), dtype=backend.input_dtype)
    parallel = max(1, backend.parallel_requests)
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="runner-warmup") as pool:
        list(pool.map(lambda _: backend.run(feed), range(max(rounds, parallel))))


def _without_complete_dumps(entries: Sequence[InfoEntry], dump_dir: Path, options: RunnerOptions, dump_format: str,
                            values: Callable[[], int]) -> tuple[list[InfoEntry], int]:
    """``-resume=true``: the entries whose dump is missing or incomplete (a power loss can leave a short one),
    and how many were skipped; ``values()`` is the number of outputs per image. A dump of another format or
    numbering for an image means other flags wrote the folder: refused, since the metric would count both."""
    try:
        existing = list_dumps(dump_dir).dumps
    except FormatError as exc:
        raise RunnerError(f"-resume=true: {exc}") from None
    todo, skipped = [], 0
    for entry in entries:
        found = existing.get(entry.image_name)
        wanted = dump_file_name(entry.image_name, options.output_binary, options.dump_suffix, dump_format)
        if found is not None and found.name != wanted:
            raise RunnerError(f"-resume=true: {found} is not the dump this run writes for that image ({wanted}): "
                              f"another run with other output flags wrote {dump_dir}; resume with that run's flags, "
                              f"or run without -resume=true into an empty folder")
        if found is not None and dump_is_complete(found, values()):
            skipped += 1
        else:
            todo.append(entry)
    return todo, skipped


_END = object()


def entries_from_inputs(inputs: str) -> list[InfoEntry]:
    """ais_bench's ``--input``: one folder of ``.bin``/``.npy`` files (natural order, as ais_bench sorts them)
    or a comma list of such files, as the entries of a ``.info`` list (sizes come from the model)."""
    parts = [part for part in inputs.split(",") if part]
    if not parts:
        raise RunnerError("--input: expected a folder of .bin/.npy files or a comma list of files")
    first = Path(parts[0])
    if first.is_dir():
        if len(parts) > 1:
            raise RunnerError(f"--input={inputs}: one folder per model input, and this model has one input")
        try:
            files = sorted(list_files(first, (".bin", ".npy")), key=_natural_key)
        except InfoError as exc:
            raise RunnerError(f"--input: {exc}") from None
    elif first.is_file():
        files = parts
    else:
        raise RunnerError(f"--input={parts[0]}: no such file or folder")
    return [InfoEntry(index, path, 0, 0, index + 1) for index, path in enumerate(files)]


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"([0-9]+)", text)]


def run_dataset(options: RunnerOptions, backend: Backend | None = None,
                progress: Callable[[int], None] | None = None,
                entries: Sequence[InfoEntry] | None = None) -> RunResult:
    """Run every image of ``options.input_text_path`` (or of ``entries``); write dumps and the perf file."""
    if entries is None:
        if not options.input_text_path:
            raise RunnerError("-input_text_path is required (a .info file from get_info.py), or -round=N for "
                              "pure inference")
        try:
            entries = read_info(options.input_text_path)
        except FormatError as exc:
            raise RunnerError(f"-input_text_path: {exc}") from None
    if options.loop < 1:
        raise RunnerError(f"--loop={options.loop}: must be at least 1")
    dump_format = options.dump_format or ("bin" if options.output_binary else "txt")
    backend = backend or open_backend(options)
    plan = _plan(backend, options)
    load = _loader(plan, options.use_dvpp)

    result = RunResult(images=0, backend=backend.description)
    info = options.input_label or options.input_text_path
    names: dict[str, InfoEntry] = {}
    usable = []
    for entry in entries:
        where = f"{info}:{entry.line}"
        if entry.image_name in names:
            result.failed.append((where, f"{entry.path}: image name {entry.image_name!r} already listed on "
                                         f"line {names[entry.image_name].line} (their dumps would collide)"))
        elif not Path(entry.path).is_file():
            result.failed.append((where, f"{entry.path}: no such file"))
        else:
            names[entry.image_name] = entry
            usable.append(entry)

    dump_dir = Path(options.dump_dir or Path(options.result_dir) / f"dumpOutput_device{options.device_id}")
    if options.save_outputs:
        dump_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(dump_dir, lambda name: parse_dump_name(name) is not None)  # left by a killed run
    _warm_up(backend, plan, options.warmup)
    listed = usable
    if options.resume and options.save_outputs:
        def values() -> int:  # outputs per image: one call on a batch of zeros, made only if a dump is checked
            output = np.asarray(backend.run(np.zeros((plan.batch, *plan.item_shape), dtype=backend.input_dtype)))
            return int(output.reshape(output.shape[0], -1).shape[1])
        usable, result.skipped = _without_complete_dumps(usable, dump_dir, options, dump_format,
                                                         functools.cache(values))
        if progress and result.skipped:
            progress(result.skipped)

    batches = [usable[i:i + plan.batch] for i in range(0, len(usable), plan.batch)]
    ready: queue.Queue = queue.Queue(maxsize=max(1, options.prefetch))
    written: queue.Queue = queue.Queue(maxsize=max(2, options.prefetch * 2))
    stop = threading.Event()
    timings = {"read": 0.0, "pre": 0.0, "post": 0.0, "loaded": 0}
    failures_lock = threading.Lock()

    def produce(pool: ThreadPoolExecutor) -> None:
        try:
            for batch_entries in batches:
                if stop.is_set():
                    break
                outcomes = list(pool.map(_guarded(load), batch_entries))
                array = np.zeros((plan.batch if plan.static_batch else len(batch_entries), *plan.item_shape),
                                 dtype=backend.input_dtype)
                kept = []
                for entry, (value, error) in zip(batch_entries, outcomes):
                    if error is not None:
                        with failures_lock:
                            result.failed.append((f"{info}:{entry.line}", error))
                        continue
                    item, read_s, pre_s = value
                    assemble = time.perf_counter()
                    array[len(kept)] = item
                    timings["read"] += read_s
                    timings["pre"] += pre_s + (time.perf_counter() - assemble)
                    kept.append(entry)
                if not kept:
                    continue
                if not plan.static_batch:
                    array = array[:len(kept)]
                timings["loaded"] += len(kept)
                put((kept, array))
        except BaseException as exc:  # surface anything unexpected in the calling thread
            put(exc)
            return
        put(_END)

    def put(item) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def post() -> None:
        while True:
            item = written.get()
            if item is _END:
                return
            kept, outputs = item
            started = time.perf_counter()
            for row, entry in enumerate(kept):
                if not options.save_outputs:
                    continue
                try:
                    path = write_dump(dump_dir, entry.image_name, outputs[row], options.output_binary,
                                      options.dump_suffix, dump_format)
                    result.written.append((entry.path, str(path)))
                except OSError as exc:
                    with failures_lock:
                        result.failed.append((f"{info}:{entry.line}", f"cannot write its dump ({exc})"))
            timings["post"] += time.perf_counter() - started
            if progress:
                progress(len(kept))

    run_started = time.perf_counter()
    spans: list[tuple[float, float]] = []  # (start, end) of every model call

    def finish(kept: list[InfoEntry], call) -> None:
        outputs, call_spans = call.result()
        spans.extend(call_spans)
        result.batch_latencies_ms.extend((end - start) * 1000.0 for start, end in call_spans)
        result.images += len(kept)
        written.put((kept, outputs))

    interrupted = False
    in_flight = max(1, backend.parallel_requests)
    with ThreadPoolExecutor(max_workers=max(1, options.loaders), thread_name_prefix="runner-load") as pool, \
            ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="runner-infer") as infer_pool:
        producer = threading.Thread(target=produce, args=(pool,), name="runner-batches", daemon=True)
        writer = threading.Thread(target=post, name="runner-dumps", daemon=True)
        producer.start()
        writer.start()
        pending: collections.deque = collections.deque()  # batches in the model, oldest first
        try:
            while True:
                item = ready.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                kept, array = item
                pending.append((kept, infer_pool.submit(_timed_calls, backend, array, options.loop)))
                if len(pending) >= in_flight:
                    finish(*pending.popleft())
            while pending:
                finish(*pending.popleft())
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stop.set()
            for _, call in pending:
                call.cancel()
            if interrupted:  # the batches already in the model: let them finish, and write them
                for kept, call in pending:
                    if not call.cancelled() and call.exception() is None:
                        finish(kept, call)
            written.put(_END)  # the writer writes the batches already inferred, then stops
            writer.join()
            producer.join()
    if interrupted:
        raise RunInterrupted(len(result.written), dump_dir if options.save_outputs else None)
    run_seconds = time.perf_counter() - run_started
    first_infer = min((start for start, _ in spans), default=None)
    last_infer = max((end for _, end in spans), default=None)
    infer_seconds = _busy_seconds(spans)

    images = max(result.images, 1)
    stats = PerfStats(
        e2e_rate=result.images / run_seconds if result.images else 0.0,
        e2e_latency_ms=run_seconds * 1000.0,
        read_ms_per_image=timings["read"] * 1000.0 / max(timings["loaded"], 1),
        preprocess_ms_per_image=timings["pre"] * 1000.0 / max(timings["loaded"], 1),
        infer_stage_rate=result.images * options.loop / (last_infer - first_infer) if result.images else 0.0,
        interface_rate=result.images * options.loop / infer_seconds if infer_seconds else 0.0,
        infer_ms_per_batch=infer_seconds * 1000.0 / max(len(result.batch_latencies_ms), 1),
        post_ms_per_image=timings["post"] * 1000.0 / images,
        processed=result.images, skipped=result.skipped, failed=len(result.failed),
        provider=backend.provider, provider_device=backend.provider_device)
    result.stats = stats
    result.failed.sort(key=_line_order)
    if options.write_perf:
        result.perf_file = Path(options.result_dir) / perf_file_name(options.batch_size, options.device_id)
        write_perf_file(result.perf_file, stats)
    if options.save_outputs:
        result.dump_dir = dump_dir
        ours = {dump_file_name(e.image_name, options.output_binary, options.dump_suffix, dump_format) for e in listed}
        result.stale_dumps = sum(1 for path in list_dumps(dump_dir).dumps.values() if path.name not in ours)
    return result


def _timed_calls(backend: Backend, array: np.ndarray, loop: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``loop`` model calls on one batch: the last outputs and each call's (start, end)."""
    spans = []
    for _ in range(loop):
        started = time.perf_counter()
        outputs = backend.run(array)
        spans.append((started, time.perf_counter()))
    return outputs, spans


def _busy_seconds(spans: Sequence[tuple[float, float]]) -> float:
    """How long at least one model call was running: the sum of the calls when they ran one at a time, less
    when several overlapped (so images / busy seconds is the model's throughput either way)."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def _line_order(failure: tuple[str, str]) -> tuple[str, int]:
    where = failure[0]
    path, _, line = where.rpartition(":")
    return (path, int(line)) if line.isdigit() else (where, 0)


def _guarded(load):
    def call(entry: InfoEntry):
        try:
            return load(entry), None
        except (ValueError, OSError) as exc:
            return None, str(exc)
    return call


def run_pure_inference(options: RunnerOptions, backend: Backend | None = None,
                       log: Callable[[str], None] = print) -> tuple[float, list[float], Path | None, str]:
    """``-round=N`` without data: N batches of random input; returns (images/s, per-batch ms, perf file or
    None when ``write_perf`` is off, its text)."""
    if options.rounds < 1:
        raise RunnerError(f"-round={options.rounds}: must be at least 1")
    backend = backend or open_backend(options)
    plan = _plan(backend, options, pure=True)
    rng = np.random.default_rng(0)
    shape = (plan.batch, *plan.item_shape)
    feed = (rng.integers(0, 256, size=shape, dtype=np.uint8) if backend.input_dtype == np.uint8
            else rng.standard_normal(shape, dtype=np.float32))
    _warm_up(backend, plan, options.warmup)
    with ThreadPoolExecutor(max_workers=max(1, backend.parallel_requests), thread_name_prefix="runner-infer") as pool:
        calls = [pool.submit(_timed_calls, backend, feed, 1) for _ in range(options.rounds)]
        spans = []
        for number, call in enumerate(calls):
            (start, end), = call.result()[1]
            spans.append((start, end))
            log(f"[INFO] Dataset number: {number} finished cost {(end - start) * 1000.0:.3f}ms")
    latencies = [(end - start) * 1000.0 for start, end in spans]
    rate = plan.batch * len(spans) / _busy_seconds(spans)
    if not options.write_perf:
        return rate, latencies, None, pure_infer_summary(rate)
    path = Path(options.result_dir) / pure_infer_perf_file_name(options.om_path, options.device_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = write_pure_infer_perf_file(path, rate, backend.provider, backend.provider_device)
    return rate, latencies, path, text


def summary_lines(result: RunResult, batch: int) -> str:
    """The console summary: upstream's block plus throughput and latency percentiles."""
    stats = result.stats
    p50, p90, p99 = _percentiles(result.batch_latencies_ms)
    return ("-----------------Performance Summary------------------\n"
            + perf_lines(stats, console=True)
            + "-----------------------------------------------------------\n"
            + f"[INFO] {result.images} images, {result.backend}\n"
            + resume_line(result)
            + f"[INFO] throughput: {stats.e2e_rate:.2f} images/s end to end, {stats.interface_rate:.2f} images/s "
              f"in the model calls\n"
            + f"[INFO] latency per batch of {batch} (ms): p50 {p50:.2f}, p90 {p90:.2f}, p99 {p99:.2f}\n")


def resume_line(result: RunResult) -> str:
    """The console line of a resumed run (empty when it skipped nothing)."""
    if not result.skipped:
        return ""
    return (f"[INFO] resumed: {result.skipped} images skipped (their dumps were complete), {result.images} "
            f"processed\n")


def pure_summary_lines(rate: float, latencies: Sequence[float], path: str | PathLike, batch: int,
                       description: str) -> str:
    p50, p90, p99 = _percentiles(latencies)
    return (f"[INFO] PureInfer result saved in {path}\n"
            "-----------------PureInfer Performance Summary------------------\n"
            f"[INFO] {pure_infer_summary(rate).replace(' = ', ': ').strip()}\n"
            "----------------------------------------------------------------\n"
            f"[INFO] {description}\n"
            f"[INFO] latency per batch of {batch} (ms): p50 {p50:.2f}, p90 {p90:.2f}, p99 {p99:.2f}\n")
