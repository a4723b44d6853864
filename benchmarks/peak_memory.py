"""How much memory a whole command needs: run it and follow its process tree (loader workers, spawned ranks,
subprocesses) until it exits.

Every --interval seconds the proportional set size (PSS: shared pages split between the processes that map
them, so the sum is what the tree really takes) of every process in the tree is read from
/proc/<pid>/smaps_rollup; the largest sum is the tree's peak. A sample can miss a peak shorter than the
interval, so the report also gives the sum of each process's own peak resident set (VmHWM), an upper bound
(pages shared between processes counted in each).

    python benchmarks/peak_memory.py -- bash test/train_full_1p.sh --data_path=/tmp/sample ...
    python benchmarks/peak_memory.py --json out.json -- bash scripts/test.sh
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT  # noqa: F401  (puts the repository on sys.path)
from seresnext.memory import GIB, proc_field


def children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children(pid)
    return pids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples (default 0.1)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_pss, peak_processes, own_peaks = 0, 0, {}
    while proc.poll() is None:
        pids = tree(proc.pid)
        total = 0
        for pid in pids:
            total += proc_field(f"/proc/{pid}/smaps_rollup", "Pss") or 0
            own_peaks[pid] = max(own_peaks.get(pid, 0), proc_field(f"/proc/{pid}/status", "VmHWM") or 0)
        if total > peak_pss:
            peak_pss, peak_processes = total, len(pids)
        time.sleep(args.interval)
    result = {"command": " ".join(command), "status": proc.returncode, "seconds": round(time.perf_counter() - start),
              "peak_pss_gib": round(peak_pss / GIB, 2), "processes_at_peak": peak_processes,
              "sum_of_own_peaks_gib": round(sum(own_peaks.values()) / GIB, 2), "processes_seen": len(own_peaks),
              "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"peak memory of the process tree: {result['peak_pss_gib']} GiB PSS ({peak_processes} processes); sum of "
          f"each process's own peak RSS {result['sum_of_own_peaks_gib']} GiB ({len(own_peaks)} processes); exit "
          f"status {proc.returncode}, {result['seconds']} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
