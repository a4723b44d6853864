"""The runner's settings (benchmark.x86_64's and ais_bench's flags plus ours) and the errors it raises."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .output_formats import DUMP_SUFFIX

__all__ = ["RunnerError", "ProviderNotStarted", "RunInterrupted", "RunnerOptions"]


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
