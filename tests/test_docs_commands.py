"""Every command in README.md and docs/*.md names a real script and passes only arguments it accepts.

Commands are parsed, not run (most need ImageNet or minutes): each Python tool's own argparse parser reads
the documented arguments, the shell wrappers' options are checked against what they accept, and options the
wrappers hand to main.py are checked by main.py's parser. So a renamed script or flag fails here instead of
silently rotting in the docs.
"""
import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WRAPPER_OPTIONS = {"--data_path", "--device_id", "--epochs", "--batch_size", "--lr", "--nproc", "--image_size",
                   "--workers", "--output_dir", "--device"}


def documented_commands():
    for doc in DOCS:
        block, start = None, 0
        lines = doc.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if line.strip().startswith("```"):
                block = line.strip()[3:] if block is None else None
                continue
            if block not in ("bash", "shell", "sh"):
                continue
            if start:  # continuation of the previous line
                continue
            text, first = line, number
            while text.rstrip().endswith("\\") and first < len(lines):
                first += 1
                text = text.rstrip()[:-1] + " " + lines[first - 1]
            text = re.sub(r"\s#.*$", "", text).strip()
            if not text or text.startswith("#"):
                continue
            argv = shlex.split(text)
            if argv[0] in ("python", "python3", "bash", "torchrun", "./quickstart.sh"):
                yield pytest.param(argv, id=f"{doc.name}:{number}")
        assert block is None, f"{doc}: unclosed code block"


class Parsed(BaseException):
    """Raised from parse_args once the arguments were accepted, so that nothing runs."""


def parses(target: str, args: list[str], monkeypatch, *, module: bool = False) -> None:
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, argv=None, namespace=None):
        original(self, argv, namespace)
        raise Parsed()

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", [target, *args])
    monkeypatch.chdir(ROOT)
    with pytest.raises(Parsed):
        if module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / target), run_name="__main__")


def test_docs_contain_commands():
    assert len(list(documented_commands())) > 30


@pytest.mark.parametrize("argv", list(documented_commands()))
def test_documented_command_is_accepted(argv, monkeypatch):
    program, args = argv[0], argv[1:]
    if program == "torchrun":
        args = args[args.index("main.py"):]
        program = "python"
    if program in ("python", "python3"):
        if args[0] == "-m":
            parses(args[1], args[2:], monkeypatch, module=True)
        elif args[0] == "get_info.py":
            assert args[1] in ("bin", "jpg") and len(args) == {"bin": 6, "jpg": 4}[args[1]], argv
        else:
            assert (ROOT / args[0]).is_file(), f"{args[0]} does not exist"
            parses(args[0], args[1:], monkeypatch)
        return
    script = args[0]
    assert (ROOT / script).is_file(), f"{script} does not exist"
    options = args[1:]
    if script.startswith("test/train_"):
        passed_on = [o for o in options if o.split("=")[0] not in WRAPPER_OPTIONS]
        assert any(o.startswith("--data_path=") for o in options), argv
        parses("main.py", ["--data_path=/x", *passed_on], monkeypatch)
    elif script == "se_resnext50_32x4d_atc.sh":
        accepted = set(re.findall(r"^\s*(--\w+)=\*\)", (ROOT / script).read_text(), re.M))
        assert {o.split("=")[0] for o in options} <= accepted, argv
    elif script in ("quickstart.sh", "./quickstart.sh"):
        parses("seresnext.pipeline", options, monkeypatch, module=True)
    else:
        assert script in ("scripts/test.sh", "scripts/install.sh"), f"no check for {script}"
