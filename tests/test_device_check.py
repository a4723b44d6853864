"""scripts/device_check.sh, the check for the first GPU machine, in its CPU dry run: it parses, its CPU-side steps
pass and the GPU-only ones are skipped, with the summary file it promises."""
import os
import re
import subprocess
import sys

from offline_helpers import ROOT

CPU_SIDE = {1, 2, 3, 4, 6, 9}


def test_the_device_check_dry_run_passes_its_cpu_steps_and_skips_the_gpu_ones(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--dry-run",
                           f"--work_dir={tmp_path / 'check'}"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "check" / "summary.txt").read_text().splitlines()
    steps = [re.match(r"(\d\d) (\S+) +(PASS|FAIL|SKIP) +\d+s  (.*)$", line) for line in summary[:-1]]
    assert all(steps) and [int(m.group(1)) for m in steps] == list(range(1, 13)), summary
    assert {int(m.group(1)) for m in steps if m.group(3) == "PASS"} == CPU_SIDE, summary
    assert all(m.group(4) == "GPU only (--dry-run)" for m in steps if int(m.group(1)) not in CPU_SIDE)
    assert re.fullmatch(r"device_check: 6 passed, 0 failed, 6 skipped \(\d+ s\); summary in .*summary\.txt",
                        summary[-1]), summary[-1]
    assert "3 fp16_static_and_dynamic_scale" in done.stdout and "static 1024 kept with 1 step skipped" in done.stdout
    assert "device lists refused with one line each" in done.stdout and "FPS@all" in done.stdout


def test_the_device_check_refuses_an_unknown_argument_with_one_line():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--gpu=3"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.startswith("device_check.sh: error: unknown argument '--gpu=3'")
