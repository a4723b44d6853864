"""With CANN and the real ais_bench installed, nothing of ours shadows them: `python3 -m ais_bench` run from the
repository root is the installed tool, and benchmark.py runs .om models through the installed ais_bench."""
import os
import subprocess
import sys
import textwrap

import numpy as np

from offline_helpers import ROOT

# Top-level names that CANN, ais_bench and torch_npu install; a file or folder of ours with one of these names
# would be imported instead of them by any script started from the repository root.
ASCEND_NAMES = ("ais_bench", "acl", "aclruntime", "ais_utils", "te", "tbe", "hccl", "torch_npu", "msame", "atc",
                "benchmark.x86_64", "benchmark.aarch64")


def test_no_file_or_folder_of_ours_is_named_like_an_ascend_package():
    ours = {p.name for p in ROOT.iterdir()} | {p.name for p in (ROOT / "seresnext").iterdir()}
    for name in ASCEND_NAMES:
        assert not {name, f"{name}.py", f"{name}.so"} & ours, name


def _installed_ais_bench(site):
    """A stand-in for the ais_bench wheel: `python -m ais_bench` says who it is, and InferSession runs an .om
    whose input is float32 [4, 3, 8, 8] and whose output scores class (sum of the image > 0)."""
    package = site / "ais_bench"
    (package / "infer").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("print('the installed ais_bench')\n")
    (package / "infer" / "__init__.py").write_text("")
    (package / "infer" / "interface.py").write_text(textwrap.dedent("""
        import numpy as np

        class _Input:
            name, shape, datatype = "actual_input_1", [4, 3, 8, 8], "FLOAT32"

        class InferSession:
            def __init__(self, device_id, model_path):
                self.device_id, self.model_path = device_id, model_path

            def get_inputs(self):
                return [_Input()]

            def infer(self, feeds):
                positive = feeds[0].reshape(4, -1).sum(axis=1) > 0
                return [np.stack([~positive, positive], axis=1).astype(np.float32)]
        """))


def test_installed_ais_bench_is_the_one_run_and_serves_om_models(tmp_path):
    site = tmp_path / "site"
    _installed_ais_bench(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-m", "ais_bench"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout == "the installed ais_bench\n", result.stderr

    (tmp_path / "model.om").write_bytes(b"om")
    rng = np.random.default_rng(0)
    signs = {}
    for index in range(1, 6):
        image = rng.standard_normal((3, 8, 8)).astype(np.float32)
        image.tofile(tmp_path / f"img{index}.bin")
        signs[f"img{index}"] = int(image.sum() > 0)
    result = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--model", str(tmp_path / "model.om"),
                             "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--output_dirname", "run",
                             "--outfmt", "TXT", "--progress=false"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Ascend runtime (ais_bench), device 0" in result.stdout
    for name, sign in signs.items():
        values = np.loadtxt(tmp_path / "out" / "run" / f"{name}_0.txt")
        assert int(values.argmax()) == sign
