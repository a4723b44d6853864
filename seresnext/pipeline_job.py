"""The machinery behind :mod:`seresnext.pipeline`'s stages: the job's settings, running one stage's command with
its log, and the stamps in ``<work>/.done/`` that let a rerun reuse a stage whose inputs are unchanged.

A stamp records what the stage depended on (data path, recipe, flags, and the size and time of its input files);
:func:`why_redo` compares it with the stage's inputs now and says, in one phrase, what changed first.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ROOT", "StageError", "Job", "say", "run", "fingerprint", "why_redo", "write_stamp"]

ROOT = Path(__file__).resolve().parents[1]


class StageError(RuntimeError):
    """A stage failed; the message names the stage, the command and where its output is."""


@dataclass
class Job:
    work: Path
    data: Path
    sample: bool
    recipe: dict
    python: str = sys.executable
    batch: int = 16
    results: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.recipe["image_size"]

    @property
    def resize(self) -> int:
        return self.recipe["val_resize"]

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    @property
    def val_flat(self) -> Path:
        """The flat val folder: links made under the work folder, else the dataset's own ``val_flat/``."""
        made = self.path("val_flat")
        return made if made.is_dir() else self.data / "val_flat"

    @property
    def labels(self) -> Path:
        """``val_label.txt`` as the data stage built it from ``val/<wnid>/``."""
        return self.path("val_label.txt")


def say(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def run(stage: str, command: list[str], log: Path, python: str = sys.executable) -> str:
    """Run one command, streaming its output to the terminal and to ``log``; raise StageError on failure.

    ``PYTHON`` is set to ``python`` so that the shell scripts (wrappers, atc script) use this job's Python.
    On Ctrl-C the command gets SIGINT too and is waited for (main.py saves its checkpoint), its last output
    goes to ``log`` only, and KeyboardInterrupt is raised again.
    """
    say(f"{stage}: $ {' '.join(shlex.quote(str(c)) for c in command)}")
    log.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    with open(log, "w") as sink:
        process = subprocess.Popen([str(c) for c in command], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1,
                                   env={**os.environ, "PYTHON": python})
        try:
            for line in process.stdout:
                sink.write(line)
                lines.append(line)
                print("    " + line, end="", flush=True)
        except KeyboardInterrupt:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # a terminal sent it already; a `kill -INT` did not
            while True:
                try:
                    sink.write(process.stdout.read())
                    process.wait()
                    break
                except KeyboardInterrupt:  # a second Ctrl-C: the command is still saving its work
                    continue
            raise
        status = process.wait()
    if status != 0:
        raise StageError(f"stage '{stage}' failed (exit {status}); its output is in {log}")
    return "".join(lines)


# ----------------------------------------------------------------------------------------------- stamps
def fingerprint(path: Path) -> str | None:
    """Size and modification time of a file, or of every file under a folder (with their names), as a short
    hash; None when missing. Cheap enough for 50,000 val images; contents are not read."""
    if not path.exists():
        return None
    if path.is_file():
        info = path.stat()
        return f"{info.st_size}:{info.st_mtime_ns}"
    digest = hashlib.sha256()
    count = 0
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            file = Path(folder, name)
            try:
                info = file.stat()
            except FileNotFoundError:  # a dangling link
                continue
            digest.update(f"{file.relative_to(path)} {info.st_size} {info.st_mtime_ns}\n".encode())
            count += 1
    return f"{count} files:{digest.hexdigest()[:16]}"


def _flatten(inputs: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in inputs.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value) -> str:
    """A value for the one-line reason: strings (paths) whole, lists and the like cut at 60 characters."""
    if isinstance(value, str):
        return value
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def why_redo(stamp: Path, inputs: dict) -> str | None:
    """None when ``stamp`` records exactly ``inputs``; else one phrase saying what changed first."""
    try:
        recorded = json.loads(stamp.read_text())["inputs"]
    except (ValueError, KeyError, TypeError):
        return "its stamp (from an older version) records no inputs"
    old, new = _flatten(recorded), _flatten(json.loads(json.dumps(inputs)))
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key) != new.get(key):
            if key.startswith("files."):
                name = key[len("files."):]
                return f"{name} changed" if new.get(key) is not None else f"{name} is gone"
            return f"{key} changed ({_short(old.get(key))} -> {_short(new.get(key))})"
    return None


def write_stamp(stamp: Path, inputs: dict) -> None:
    stamp.write_text(json.dumps({"finished": time.time(), "inputs": inputs}, indent=1) + "\n")
