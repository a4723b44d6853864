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

import functools
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import (CUDA_OPTIONS, OM_HELP, PROVIDERS, AscendBackend, Backend, OpenVinoBackend, OrtBackend,
                       provider_problem)
from .formats import FormatError, InfoEntry, read_info, remove_temporaries
from .output_formats import (PerfStats, dump_file_name, dump_is_complete, list_dumps, parse_dump_name, perf_file_name,
                             pure_infer_perf_file_name, pure_infer_summary, write_dump, write_perf_file,
                             write_pure_infer_perf_file)
from .info import InfoError, list_files
from .model_input import InputPlan, input_loader, plan_input
from .runner_options import ProviderNotStarted, RunInterrupted, RunnerError, RunnerOptions
from .stages import BatchStages, timed_calls

__all__ = ["RunnerError", "RunInterrupted", "RunnerOptions", "RunResult", "Backend", "OrtBackend", "OpenVinoBackend",
           "AscendBackend", "open_backend", "openvino_available", "run_dataset", "run_pure_inference",
           "entries_from_inputs", "provider_problem", "ProviderNotStarted", "OM_HELP", "PROVIDERS", "CUDA_OPTIONS"]


def openvino_available() -> bool:
    """True when the optional ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


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


def _warm_up(backend: Backend, plan: InputPlan, rounds: int) -> None:
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
        entries = _read_entries(options)
    if options.loop < 1:
        raise RunnerError(f"--loop={options.loop}: must be at least 1")
    dump_format = options.dump_format or ("bin" if options.output_binary else "txt")
    backend = backend or open_backend(options)
    plan = plan_input(backend, options)
    load = input_loader(plan, options.use_dvpp)

    result = RunResult(images=0, backend=backend.description)
    info = options.input_label or options.input_text_path
    listed = _checked_entries(entries, info, result.failed)
    dump_dir = Path(options.dump_dir or Path(options.result_dir) / f"dumpOutput_device{options.device_id}")
    if options.save_outputs:
        dump_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(dump_dir, lambda name: parse_dump_name(name) is not None)  # left by a killed run
    _warm_up(backend, plan, options.warmup)
    usable = listed
    if options.resume and options.save_outputs:
        usable, result.skipped = _without_complete_dumps(usable, dump_dir, options, dump_format,
                                                         _outputs_per_image(backend, plan))
        if progress and result.skipped:
            progress(result.skipped)

    def save(entry: InfoEntry, outputs: np.ndarray) -> Path:
        return write_dump(dump_dir, entry.image_name, outputs, options.output_binary, options.dump_suffix,
                          dump_format)

    stages = BatchStages(backend, plan, load, loaders=options.loaders, prefetch=options.prefetch, loop=options.loop,
                         save=save if options.save_outputs else None, where=lambda entry: f"{info}:{entry.line}",
                         progress=progress)
    batches = [usable[i:i + plan.batch] for i in range(0, len(usable), plan.batch)]
    run_started = time.perf_counter()
    if stages.run(batches):
        raise RunInterrupted(len(stages.written), dump_dir if options.save_outputs else None)
    run_seconds = time.perf_counter() - run_started
    result.images, result.written = stages.images, stages.written
    result.failed.extend(stages.failed)
    result.batch_latencies_ms = [(end - start) * 1000.0 for start, end in stages.spans]
    result.stats = _perf_stats(stages, result, options.loop, backend, run_seconds)
    result.failed.sort(key=_line_order)
    if options.write_perf:
        result.perf_file = Path(options.result_dir) / perf_file_name(options.batch_size, options.device_id)
        write_perf_file(result.perf_file, result.stats)
    if options.save_outputs:
        result.dump_dir = dump_dir
        ours = {dump_file_name(e.image_name, options.output_binary, options.dump_suffix, dump_format) for e in listed}
        result.stale_dumps = sum(1 for path in list_dumps(dump_dir).dumps.values() if path.name not in ours)
    return result


def _read_entries(options: RunnerOptions) -> list[InfoEntry]:
    """The entries of ``-input_text_path``."""
    if not options.input_text_path:
        raise RunnerError("-input_text_path is required (a .info file from get_info.py), or -round=N for "
                          "pure inference")
    try:
        return read_info(options.input_text_path)
    except FormatError as exc:
        raise RunnerError(f"-input_text_path: {exc}") from None


def _checked_entries(entries: Sequence[InfoEntry], info: str | None,
                     failed: list[tuple[str, str]]) -> list[InfoEntry]:
    """The entries that can run: a missing file, or an image name listed twice (their dumps would collide), is
    added to ``failed`` instead."""
    names: dict[str, InfoEntry] = {}
    usable = []
    for entry in entries:
        where = f"{info}:{entry.line}"
        if entry.image_name in names:
            failed.append((where, f"{entry.path}: image name {entry.image_name!r} already listed on "
                                  f"line {names[entry.image_name].line} (their dumps would collide)"))
        elif not Path(entry.path).is_file():
            failed.append((where, f"{entry.path}: no such file"))
        else:
            names[entry.image_name] = entry
            usable.append(entry)
    return usable


def _outputs_per_image(backend: Backend, plan: InputPlan) -> Callable[[], int]:
    """The number of outputs per image: one call on a batch of zeros, made only if a dump is checked."""
    def values() -> int:
        output = np.asarray(backend.run(np.zeros((plan.batch, *plan.item_shape), dtype=backend.input_dtype)))
        return int(output.reshape(output.shape[0], -1).shape[1])
    return functools.cache(values)


def _perf_stats(stages: BatchStages, result: RunResult, loop: int, backend: Backend, run_seconds: float) -> PerfStats:
    """The perf file's figures: end to end, per stage, and the model calls' (busy time, first to last call)."""
    spans = stages.spans
    first_infer = min((start for start, _ in spans), default=None)
    last_infer = max((end for _, end in spans), default=None)
    infer_seconds = _busy_seconds(spans)
    images = max(result.images, 1)
    return PerfStats(
        e2e_rate=result.images / run_seconds if result.images else 0.0,
        e2e_latency_ms=run_seconds * 1000.0,
        read_ms_per_image=stages.read_seconds * 1000.0 / max(stages.loaded, 1),
        preprocess_ms_per_image=stages.preprocess_seconds * 1000.0 / max(stages.loaded, 1),
        infer_stage_rate=result.images * loop / (last_infer - first_infer) if result.images else 0.0,
        interface_rate=result.images * loop / infer_seconds if infer_seconds else 0.0,
        infer_ms_per_batch=infer_seconds * 1000.0 / max(len(result.batch_latencies_ms), 1),
        post_ms_per_image=stages.post_seconds * 1000.0 / images,
        processed=result.images, skipped=result.skipped, failed=len(result.failed),
        provider=backend.provider, provider_device=backend.provider_device)


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


def run_pure_inference(options: RunnerOptions, backend: Backend | None = None,
                       log: Callable[[str], None] = print) -> tuple[float, list[float], Path | None, str]:
    """``-round=N`` without data: N batches of random input; returns (images/s, per-batch ms, perf file or
    None when ``write_perf`` is off, its text)."""
    if options.rounds < 1:
        raise RunnerError(f"-round={options.rounds}: must be at least 1")
    backend = backend or open_backend(options)
    plan = plan_input(backend, options, pure=True)
    rng = np.random.default_rng(0)
    shape = (plan.batch, *plan.item_shape)
    feed = (rng.integers(0, 256, size=shape, dtype=np.uint8) if backend.input_dtype == np.uint8
            else rng.standard_normal(shape, dtype=np.float32))
    _warm_up(backend, plan, options.warmup)
    with ThreadPoolExecutor(max_workers=max(1, backend.parallel_requests), thread_name_prefix="runner-infer") as pool:
        calls = [pool.submit(timed_calls, backend, feed, 1) for _ in range(options.rounds)]
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
