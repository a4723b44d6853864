"""The files an offline-inference run produces, each read and written here and nowhere else.

Formats (upstream's, byte for byte where upstream defined the bytes):

* dump files: ``<image name>_<k>.txt`` (the logits, space separated), ``.bin`` (raw float32) or ``.npy``,
  where ``k`` is the model output: benchmark.x86_64 numbers outputs from 1 (``_1``), ais_bench from 0 (``_0``),
  and msame writes ``<image name>_output_0.txt`` with a line break every 100 values.
* ``result.json``: upstream's ``json.dump`` of ``{"title": ..., "value": [{"key": ..., "value": ...}, ...]}``.
* perf file ``perf_vision_batchsize_<bs>_device_<id>.txt``: the five ``[stage] throughputRate: ...`` lines, then
  ours in the same form: ``[images] processed: N, skipped: M, failed: F`` and ``[backend] provider: P[, device:
  D]`` (what really ran: ONNX Runtime can fall back to the CPU). The pure-inference perf file has its one line,
  then the same ``[backend]`` line.
* ais_bench's ``<run>_summary.json``: throughput and ``NPU_compute_time`` statistics (ms).

The inputs (``.bin``, ``.info``, ``val_label.txt``), image names and the atomic writes used here are in
:mod:`seresnext.formats`. This module imports no torch either.
"""
from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from .formats import FormatError, atomic_write, image_stem

__all__ = [
    "DUMP_SUFFIX", "DUMP_FORMATS", "DumpName", "DumpListing", "dump_file_name", "write_dump", "read_dump",
    "parse_dump_name", "image_name_of_dump", "list_dumps", "dump_is_complete",
    "result_json_dict", "write_result_json", "read_result_json",
    "PerfStats", "perf_file_name", "perf_lines", "backend_line", "write_perf_file", "read_perf_file",
    "PURE_INFER_PREFIX",
    "read_pure_infer_perf_file",
    "pure_infer_perf_file_name", "pure_infer_summary", "write_pure_infer_perf_file",
    "ais_summary_dict", "ais_summary_lines", "write_ais_summary", "read_ais_summary",
]


# ----------------------------------------------------------------------------------------------- dumps
DUMP_SUFFIX = "_1"
DUMP_FORMATS = ("txt", "bin", "npy")
_DUMP_RE = re.compile(r"^(?P<stem>.+?)(?:_output)?_(?P<output>\d+)\.(?P<ext>" + "|".join(DUMP_FORMATS) + ")$")


def dump_file_name(image_name: str, binary: bool, suffix: str = DUMP_SUFFIX, ext: str | None = None) -> str:
    """``<image name>_1.txt`` (or ``.bin``): benchmark.x86_64's output for the model's first output.

    ais_bench's names are ``suffix="_0"`` and ``ext`` one of ``txt``, ``bin``, ``npy``.
    """
    return f"{image_name}{suffix}.{ext or ('bin' if binary else 'txt')}"


def write_dump(folder: str | PathLike, image_name: str, logits: np.ndarray, binary: bool,
               suffix: str = DUMP_SUFFIX, ext: str | None = None) -> Path:
    """Write one image's output: a text line of ``%.9g`` values (exact for float32), raw float32 (``.bin``)
    or a ``.npy`` array of shape ``(1, classes)`` (as ais_bench writes one image's slice of the batch)."""
    ext = ext or ("bin" if binary else "txt")
    path = Path(folder) / dump_file_name(image_name, binary, suffix, ext)
    values = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1)
    if ext == "bin":
        atomic_write(path, memoryview(values).cast("B"), durable=False)
    elif ext == "npy":
        buffer = io.BytesIO()
        np.save(buffer, values.reshape(1, -1), allow_pickle=False)
        atomic_write(path, buffer.getvalue(), durable=False)
    else:
        atomic_write(path, " ".join([f"{v:.9g}" for v in values.tolist()]) + "\n", durable=False)
    return path


@dataclass(frozen=True)
class DumpName:
    """What a dump file's name says: the image, the model output index and the format."""

    image: str
    output: int
    ext: str


def parse_dump_name(file_name: str) -> DumpName | None:
    """``X_1.txt``, ``X_0.bin``, ``X_output_0.txt``, ``X.JPEG_1.txt`` -> image ``X``; None if not a dump.

    Only the ``_<k>.<ext>`` suffix (and msame's ``_output``) and then a known image extension are removed,
    so dotted image names survive (``a.b.c_1.txt`` is image ``a.b.c``).
    """
    match = _DUMP_RE.match(file_name)
    if match is None:
        return None
    return DumpName(image_stem(match.group("stem")), int(match.group("output")), match.group("ext"))


def image_name_of_dump(file_name: str) -> str | None:
    """The image a dump file belongs to, or None if the name is not a dump's."""
    parsed = parse_dump_name(file_name)
    return parsed.image if parsed else None


@dataclass
class DumpListing:
    """A dump folder: the first output's dump of each image, and what was left aside."""

    dumps: dict[str, Path]
    ignored: list[str]  # files whose names are not dumps' (e.g. a summary.json)
    other_outputs: list[str]  # dumps of an image's later outputs (a model with several outputs)


def list_dumps(folder: str | PathLike) -> DumpListing:
    """Map image name -> the dump of its first model output (the lowest ``_<k>`` present for it).

    Two dumps of one image and output (``X_1.txt`` and ``X_1.bin``, or ``X_1.txt`` and ``X.JPEG_1.txt``)
    are a :class:`FormatError`.
    """
    folder = Path(folder)
    found: dict[str, dict[int, Path]] = {}
    ignored: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        parsed = parse_dump_name(entry.name)
        if parsed is None:
            ignored.append(entry.name)
            continue
        outputs = found.setdefault(parsed.image, {})
        if parsed.output in outputs:
            raise FormatError(f"{folder}: two dumps for image {parsed.image!r}: {outputs[parsed.output].name} "
                              f"and {entry.name}")
        outputs[parsed.output] = Path(entry.path)
    dumps, other_outputs = {}, []
    for image, outputs in found.items():
        first = min(outputs)
        dumps[image] = outputs[first]
        other_outputs += [path.name for index, path in sorted(outputs.items()) if index != first]
    return DumpListing(dumps, ignored, other_outputs)


def dump_is_complete(path: str | PathLike, values: int) -> bool:
    """Whether ``path`` holds a whole dump of ``values`` numbers, as :func:`write_dump` writes it. A killed write
    never leaves a partial file under the final name (it renames a finished temporary), but a power loss before
    the data reached the disk can leave an empty or short one."""
    path = Path(path)
    try:
        if path.suffix == ".bin":
            return path.stat().st_size == 4 * values
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False).size == values  # a short file fails to map
        data = path.read_bytes()
        return data.endswith(b"\n") and len(data.split()) == values
    except (OSError, ValueError, EOFError):
        return False


def read_dump(path: str | PathLike) -> np.ndarray:
    """The float32 values of one dump file: every value of a text file (whatever its line breaks), raw
    float32 of a ``.bin``, the array of a ``.npy``."""
    path = Path(path)
    if path.suffix == ".bin":
        size = path.stat().st_size
        if size == 0 or size % 4:
            raise FormatError(f"{path}: {size} bytes is not a whole number of float32 values")
        return np.fromfile(path, dtype=np.float32)
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FormatError(f"{path}: not a readable .npy array ({exc})") from None
        if array.size == 0 or not np.issubdtype(array.dtype, np.number):
            raise FormatError(f"{path}: {array.dtype} array of shape {array.shape}, expected the model's outputs")
        return array.astype(np.float32).reshape(-1)
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    fields = text.split()
    if not fields:
        raise FormatError(f"{path}:1: empty dump (expected the model's outputs, space separated)")
    try:
        return np.array(fields, dtype=np.float32)
    except ValueError:
        for number, line in enumerate(text.splitlines(), 1):
            bad = next((v for v in line.split() if not _is_float(v)), None)
            if bad is not None:
                raise FormatError(f"{path}:{number}: {bad!r} is not a number") from None
        raise


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- result.json
def result_json_dict(num_images: int, num_classes: int | str, topk_accuracy: Sequence[float]) -> dict:
    """Upstream's result dict: counts and ``Top<k> accuracy`` as ``str(round(acc * 100, 2)) + '%'``.

    ``topk_accuracy`` holds fractions (numpy float64, as upstream's ``np.cumsum(hits) / count``), so the
    rounding and the string form are upstream's.
    """
    value = [{"key": "Number of images", "value": str(num_images)},
             {"key": "Number of classes", "value": str(num_classes)}]
    for k, accuracy in enumerate(topk_accuracy, 1):
        value.append({"key": "Top" + str(k) + " accuracy",
                      "value": str(round(np.float64(accuracy) * 100, 2)) + "%"})
    return {"title": "Overall statistical evaluation", "value": value}


def write_result_json(path: str | PathLike, table: Mapping) -> None:
    """``json.dump(table, f)`` with json's defaults, as upstream (no indent, no trailing newline)."""
    atomic_write(path, json.dumps(table))


def read_result_json(path: str | PathLike) -> dict[str, str]:
    """``result.json`` as ``{key: value}``."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
        return {row["key"]: row["value"] for row in table["value"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: not an upstream result.json ({exc})") from None


# ----------------------------------------------------------------------------------------------- perf file
@dataclass(frozen=True)
class PerfStats:
    """The runner's measurements; rates in images/s, latencies in ms.

    ``e2e_latency_ms`` is the whole run; the ``*_ms_per_image`` values are time spent in that stage per
    image; ``infer_ms_per_batch`` is the mean model call; ``infer_stage_rate`` counts images over the infer
    stage's wall time, ``interface_rate`` over the model calls alone. ``processed`` (when set), ``skipped``
    (``-resume=true``: their dumps were already complete) and ``failed`` count the run's images.
    """

    e2e_rate: float
    e2e_latency_ms: float
    read_ms_per_image: float
    preprocess_ms_per_image: float
    infer_stage_rate: float
    interface_rate: float
    infer_ms_per_batch: float
    post_ms_per_image: float
    processed: int | None = None
    skipped: int = 0
    failed: int = 0
    provider: str = ""  # what ran, e.g. CUDAExecutionProvider (empty: not known, no [backend] line)
    provider_device: int | None = None  # its device index, on a GPU or NPU


def perf_file_name(batch_size: int, device_id: int) -> str:
    return f"perf_vision_batchsize_{batch_size}_device_{device_id}.txt"


def _rate(ms_per_image: float) -> float:
    return 1000.0 / ms_per_image if ms_per_image > 0 else 0.0


def backend_line(provider: str, device: int | None = None) -> str:
    """Ours: ``[backend] provider: CUDAExecutionProvider, device: 0`` (the provider that really ran); empty
    when ``provider`` is not known."""
    if not provider:
        return ""
    return f"[backend] provider: {provider}" + ("" if device is None else f", device: {device}") + "\n"


def perf_lines(stats: PerfStats, console: bool = False) -> str:
    """Upstream's five perf lines (``%g`` numbers, as benchmark.x86_64 printed them), then ours when the image
    counts are set: ``[images] processed: 37, skipped: 13, failed: 0``, and when the provider is known
    ``[backend] provider: CPUExecutionProvider`` (:func:`backend_line`), in the same form, so that parsers of
    upstream's lines (by stage name or by line number) read the file as before.

    The file says ``[infer]`` / ``[post]``; benchmark.x86_64's console summary said ``[inference]`` /
    ``[postprocess]``, and ``console=True`` keeps that.
    """
    g = lambda v: f"{v:g}"  # noqa: E731
    infer, post = ("inference", "postprocess") if console else ("infer", "post")
    return (f"[e2e] throughputRate: {g(stats.e2e_rate)}, latency: {g(stats.e2e_latency_ms)}\n"
            f"[data read] throughputRate: {g(_rate(stats.read_ms_per_image))}, "
            f"moduleLatency: {g(stats.read_ms_per_image)}\n"
            f"[preprocess] throughputRate: {g(_rate(stats.preprocess_ms_per_image))}, "
            f"moduleLatency: {g(stats.preprocess_ms_per_image)}\n"
            f"[{infer}] throughputRate: {g(stats.infer_stage_rate)}, Interface throughputRate: "
            f"{g(stats.interface_rate)}, moduleLatency: {g(stats.infer_ms_per_batch)}\n"
            f"[{post}] throughputRate: {g(_rate(stats.post_ms_per_image))}, "
            f"moduleLatency: {g(stats.post_ms_per_image)}\n"
            + ("" if stats.processed is None else
               f"[images] processed: {stats.processed}, skipped: {stats.skipped}, failed: {stats.failed}\n")
            + ("" if console else backend_line(stats.provider, stats.provider_device)))


def write_perf_file(path: str | PathLike, stats: PerfStats) -> str:
    """Write the perf file and return its text."""
    text = perf_lines(stats)
    atomic_write(path, text)
    return text


_PERF_LINE = re.compile(r"^\[(?P<stage>[a-z0-9 ]+)\] (?P<fields>.*)$")


def read_perf_file(path: str | PathLike) -> dict[str, dict[str, float | str]]:
    """``{stage: {field: value}}``, e.g. ``read_perf_file(p)["infer"]["Interface throughputRate"]``; numbers
    as floats, the ``[backend]`` line's provider as text (``read_perf_file(p)["backend"]["provider"]``)."""
    stages: dict[str, dict[str, float]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        match = _PERF_LINE.match(line.strip())
        if not match:
            raise FormatError(f"{path}:{number}: not a perf line: {line!r}")
        fields = {}
        for part in match.group("fields").split(", "):
            key, _, value = part.partition(": ")
            try:
                fields[key] = float(value)
            except ValueError:
                if match.group("stage") != "backend" or not value:
                    raise FormatError(f"{path}:{number}: {part!r} is not 'name: number'") from None
                fields[key] = value
        stages[match.group("stage")] = fields
    return stages


PURE_INFER_PREFIX = "PureInfer_perf_of_"


def pure_infer_perf_file_name(model_path: str | PathLike, device_id: int) -> str:
    return f"{PURE_INFER_PREFIX}{Path(model_path).stem}_in_device_{device_id}.txt"


def pure_infer_summary(rate: float) -> str:
    """benchmark.x86_64's pure-inference line; ``ave_latency`` is ms per sample (1000 / rate)."""
    return f"ave_throughputRate = {rate:g}samples/s, ave_latency = {_rate(rate):g}ms\n"


def read_pure_infer_perf_file(path: str | PathLike) -> float:
    """The images/s of a pure-inference perf file (:func:`write_pure_infer_perf_file`; its first line)."""
    text = Path(path).read_text(encoding="utf-8")
    match = re.match(r"ave_throughputRate = ([0-9.eE+-]+)samples/s", text)
    if not match:
        raise FormatError(f"{path}:1: not a pure-inference perf line: {text.splitlines()[0] if text else ''!r}")
    return float(match.group(1))


def write_pure_infer_perf_file(path: str | PathLike, rate: float, provider: str = "",
                               provider_device: int | None = None) -> str:
    """Write ``result/PureInfer_perf_of_<model>_in_device_<id>.txt`` (``-round=N`` without data): upstream's
    line, then ours naming the provider that ran (:func:`backend_line`)."""
    text = pure_infer_summary(rate) + backend_line(provider, provider_device)
    atomic_write(path, text)
    return text


# ----------------------------------------------------------------------------------------------- ais_bench summary
AIS_PERCENTILE = 99


def _time_stats(values_ms: Sequence[float]) -> dict:
    """ais_bench's statistics block (ms): min, max, mean, median, percentile(99%), count; zeros when empty."""
    values = np.asarray(values_ms, dtype=np.float64)
    if values.size == 0:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, f"percentile({AIS_PERCENTILE}%)": 0.0,
                "count": 0}
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "median": float(np.median(values)),
            f"percentile({AIS_PERCENTILE}%)": float(np.percentile(values, AIS_PERCENTILE)), "count": int(values.size)}


def ais_summary_dict(compute_ms: Sequence[float], batch_size: float,
                     files: Sequence[tuple[Sequence[str], Sequence[str]]] = (), args: Sequence[str] = ()) -> dict:
    """ais_bench's ``<run>_summary.json``: ``NPU_compute_time`` (ms per model call), ``H2D_latency`` and
    ``D2H_latency`` (host-device copies: none here, so empty blocks), ``throughput`` = 1000 * batch / mean
    compute ms, ``filesinfo`` (per sample: input and output files), ``args`` and the per-call list."""
    compute = _time_stats(compute_ms)
    return {
        "filesinfo": {str(i): {"infiles": list(infiles), "outfiles": list(outfiles)}
                      for i, (infiles, outfiles) in enumerate(files)},
        "args": list(args),
        "NPU_compute_time": compute,
        "H2D_latency": _time_stats(()),
        "D2H_latency": _time_stats(()),
        "throughput": 1000.0 * batch_size / compute["mean"] if compute["mean"] else 0.0,
        "npu_compute_time_list": [float(v) for v in compute_ms],
        "pid": os.getpid(),
    }


def ais_summary_lines(summary: Mapping, batch_size: float) -> str:
    """ais_bench's console summary: the NPU_compute_time statistics and the throughput line."""
    t = summary["NPU_compute_time"]
    return ("[INFO] -----------------Performance Summary------------------\n"
            f"[INFO] NPU_compute_time (ms): min = {t['min']}, max = {t['max']}, mean = {t['mean']}, "
            f"median = {t['median']}, percentile({AIS_PERCENTILE}%) = {t[f'percentile({AIS_PERCENTILE}%)']}\n"
            f"[INFO] throughput 1000*batchsize.mean({batch_size})/NPU_compute_time.mean({t['mean']}): "
            f"{summary['throughput']}\n"
            "[INFO] ------------------------------------------------------\n")


def write_ais_summary(path: str | PathLike, summary: Mapping) -> None:
    """``json.dump`` of the summary, as ais_bench writes it."""
    atomic_write(path, json.dumps(summary))


def read_ais_summary(path: str | PathLike) -> dict:
    """An ais_bench ``*_summary.json``; one that lacks ``throughput`` or ``NPU_compute_time`` is a FormatError."""
    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        float(summary["throughput"]), float(summary["NPU_compute_time"]["mean"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: not an ais_bench summary.json ({exc.__class__.__name__}: {exc})") from None
    return summary
