"""pyproject.toml and the requirements files say the same thing: upstream users install with requirements.txt."""
import re

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _requirements(path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-r ")]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()


def test_pyproject_dependencies_are_requirements_txt(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["openvino"]
    assert sorted(declared, key=_name) == sorted(_requirements(repo_root / "requirements.txt"), key=_name)


def test_pyproject_test_extra_is_requirements_test_txt(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    assert sorted(project["optional-dependencies"]["test"], key=_name) == sorted(
        _requirements(repo_root / "requirements-test.txt"), key=_name)
