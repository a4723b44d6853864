"""The benchmark scripts that are not exercised elsewhere: a small run of each checks what it reports."""
import json
import subprocess
import sys

import pytest

from offline_helpers import ROOT


def test_profile_train_splits_a_step_into_op_groups(tmp_path):
    out = tmp_path / "profile_train.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_train.py"), "--size", "32",
                             "--batch", "2", "--steps", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())["results"]
    groups = report["ms_per_step"]
    assert groups["convolution forward"] > 0 and groups["convolution backward"] > 0
    assert groups["batch norm"] > 0 and groups["element-wise and copies"] > 0
    assert sum(report["ms_per_step_by_op"].values()) == pytest.approx(sum(groups.values()))
    assert report["rates"]["convolution backward GFLOP/s"] > 0
    assert "bfloat16 autocast, channels_last" in result.stdout
