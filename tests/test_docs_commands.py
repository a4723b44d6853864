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
                   "--workers", "--output_dir", "--device", "--accum_steps"}


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


# ------------------------------------------------------------------------------------------------- defaults
# Every default a doc states must be the tool's. A doc states a default (1) in the first cell of an option
# table (a table headed "option" or "flag": `-warmup=2`, `--outfmt BIN`), (2) as "`--flag` ... (default X)",
# or (3) in a paragraph that lists flags with their defaults ("defaults first", "spelling, default and
# meaning"). The tool is the one defining the flag; where several do, the one the doc named last before the
# statement. A flag with an optional value (nargs="?") may state the value it takes when given alone.
TOOLS = {  # name as the docs write it -> (script or module, is_module)
    "main.py": ("main.py", False), "benchmark.py": ("benchmark.py", False),
    "quickstart.sh": ("seresnext.pipeline", True), "seresnext.build": ("seresnext.build", True),
    "vision_metric_ImageNet.py": ("vision_metric_ImageNet.py", False),
    "preprocess_se_resnext50_32x4d_pth.py": ("preprocess_se_resnext50_32x4d_pth.py", False),
    "pthtar2onnx.py": ("pthtar2onnx.py", False), "seresnext50_pth2onnx.py": ("seresnext50_pth2onnx.py", False),
    "demo.py": ("demo.py", False), "make_val_label.py": ("make_val_label.py", False),
    "seresnext.sample_data": ("seresnext.sample_data", True),
}
SHELL_TOOLS = {"se_resnext50_32x4d_atc.sh": "se_resnext50_32x4d_atc.sh", "test/train_": "test/wrapper_common.sh"}
PLACEHOLDER = re.compile(r"(DIR|N|M|X|F|PATH|NAME|FILE|IMAGE|SECONDS)(\.\w+)?|<.*>|.*\.\.\..*|.*….*")  # and 0,...,7
DEFAULT_PHRASE = r"\(default:? (`[^`]+`|[\w.+-]+)[),;]"
LIST_MARKERS = ("defaults first", "spelling, default and meaning")


class Captured(BaseException):
    def __init__(self, parser):
        self.parser = parser


def parser_defaults(target: str, module: bool, monkeypatch) -> dict:
    """option string -> default, from the tool's own argparse parser (captured, nothing runs)."""
    def capture(self, argv=None, namespace=None):
        raise Captured(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        patch.setattr(sys, "argv", [target])
        patch.chdir(ROOT)
        try:
            if module:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(ROOT / target), run_name="__main__")
        except Captured as captured:
            parser = captured.parser
    return {option: (action.default, action.const) if action.nargs == "?" else action.default
            for action in parser._actions for option in action.option_strings
            if action.default is not argparse.SUPPRESS}


def shell_defaults(script: str) -> dict:
    """--name -> default, from a shell script's ``name=value`` assignments before its argument loop and its
    ``${name:-value}`` expansions."""
    text = (ROOT / script).read_text()
    head = text.split("for arg", 1)[0].split("for para", 1)[0]
    found = {f"--{name}": value.strip("\"'") for name, value in re.findall(r"^(\w+)=(\S*)", head, re.M)}
    found.update({f"--{name}": value for name, value in re.findall(r"\$\{(\w+):-([^}]*)\}", text)})
    return found


def stated_defaults():
    """(doc:line, tool named last before it, option strings, value) for every default a doc states."""
    names = sorted(set(TOOLS) | set(SHELL_TOOLS), key=len, reverse=True)
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        context, paragraph, option_table = None, [], False
        for number, line in enumerate(lines + [""], 1):
            for name in names:
                if name in line:
                    context = name
                    break
            where = f"{doc.name}:{number}"
            cells = [cell.strip() for cell in line.split("|")]
            if not line.startswith("|"):
                option_table = False
            elif option_table and len(cells) > 2:
                tokens = re.findall(r"`([^`]+)`", cells[1])
                for token in tokens:
                    yield from _token(where, context, token)
                stated = re.search(DEFAULT_PHRASE, line)
                flags = re.findall(r"-{1,2}[A-Za-z][\w/-]*", " ".join(tokens))
                if stated and flags:
                    yield (where, context, flags[-1].split("/"), stated.group(1).strip("`"))
                continue
            elif len(cells) > 2 and cells[1] in ("option", "flag"):
                option_table = True
            if line.strip():
                paragraph.append(line)
                continue
            text = " ".join(paragraph)
            for match in re.finditer(r"`([^`]*)`[^`(|]{0,40}" + DEFAULT_PHRASE, text):
                flags = re.findall(r"-{1,2}[A-Za-z][\w/-]*", match.group(1))
                if flags:
                    yield (where, context, flags[-1].split("/"), match.group(2).strip("`"))
            if any(marker in text for marker in LIST_MARKERS):
                for token in re.findall(r"`([^`]+)`", text):
                    for part in re.findall(r"-{1,2}[A-Za-z][\w/-]*[ =]\S+", token):
                        yield from _token(where, context, part)
            paragraph = []


def _token(where, context, token):
    match = re.fullmatch(r"(-{1,2}[A-Za-z][\w/-]*)[ =](\S+)", token.strip())
    if match and not PLACEHOLDER.fullmatch(match.group(2)):
        yield (where, context, match.group(1).split("/"), match.group(2))


def _same(stated: str, default) -> bool:
    stated = stated.split("|")[0]  # choices: the first is the default
    if isinstance(default, tuple):  # nargs="?": the default, or the value taken when the flag is given alone
        return any(_same(stated, value) for value in default)
    if isinstance(default, bool):
        return stated.lower() == str(default).lower()
    if default is None:
        return False
    try:
        return float(stated) == float(default)
    except (TypeError, ValueError):
        return stated.removeprefix("./") == str(default).removeprefix("./")


def test_every_default_a_doc_states_is_the_tools_default(monkeypatch):
    defaults = {name: parser_defaults(*target, monkeypatch) for name, target in TOOLS.items()}
    defaults.update({name: shell_defaults(script) for name, script in SHELL_TOOLS.items()})
    checked, wrong = 0, []
    for where, context, options, value in stated_defaults():
        tools = [name for name in defaults if any(o in defaults[name] for o in options)]
        assert tools, f"{where}: no tool has {'/'.join(options)}"
        tool = context if context in tools else tools[0] if len(tools) == 1 else None
        candidates = [tool] if tool else tools
        actual = [defaults[t][next(o for o in options if o in defaults[t])] for t in candidates]
        if not any(_same(value, a) for a in actual):
            wrong.append(f"{where}: {'/'.join(options)} {value!r}, but {'/'.join(candidates)} default "
                         f"{' / '.join(map(repr, actual))}")
        checked += 1
    assert not wrong, "\n".join(wrong)
    assert checked > 40
