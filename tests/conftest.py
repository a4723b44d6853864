import os
import shutil
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # on sys.path through pyproject.toml's pythonpath
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

# A suite started in the background by a script (`bash scripts/test.sh &`, nohup, a CI runner without job control)
# inherits SIGINT ignored, and so would every process the tests start: Python then raises no KeyboardInterrupt
# and bash cannot trap INT, so the tests that Ctrl-C a job (runner, quickstart) saw it run on to the end. The
# tests send SIGINT on purpose: give this process Python's handler, which its children get back as the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


_CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report


@pytest.fixture(autouse=True)
def _passed_tests_give_their_disk_back(request):
    """A passed test's tmp_path goes as soon as it has passed; a failed one's stays for the post-mortem.

    The suite writes real checkpoints (about 200 MB each with the optimizer state) and ONNX models (about
    110 MB): kept to the end of the session, as pytest does, they came to 17.7 GB, and a CI machine with less
    free disk than that failed half-way with `No space left on device`. Removed per test, the peak is the
    largest single test plus the module and session fixtures.
    """
    yield
    tmp_path = request.node.funcargs.get("tmp_path")
    if tmp_path is not None and request.node.stash.get(_CALL_PASSED, False):
        shutil.rmtree(tmp_path, ignore_errors=True)
