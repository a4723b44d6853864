#!/bin/bash
# Run every benchmark on this machine, one after the other (never in parallel: they would share the cores),
# and write benchmarks/results/*.json plus one markdown report, benchmarks/results/REPORT.md.
#
# Usage: bash benchmarks/run_all.sh [--quick] [--data=DIR]
#   --quick     fewer repeats and batch sizes (a smoke run; not for published figures)
#   --data=DIR  an existing sample dataset (default: generate one under $WORK)
# On a CUDA machine the same script measures the GPU: bench_train.py picks cuda (fp16 autocast,
# channels_last, compile), and bench_runner.py runs its candidates on ONNX Runtime's CUDA provider and on
# cuda when onnxruntime-gpu is installed (the runner picks the provider itself, -provider=auto).
# Environment: PYTHON (default: ./.venv/bin/python, else python3), WORK (default: a new private folder from
# mktemp -d, never a fixed /tmp name that another user could plant a symlink at),
# RUNNER_ARGS (extra bench_runner.py flags, e.g. "--int8 --checkpoint model_best.pth.tar").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
quick=false
data=""
for arg in "$@"; do
    case $arg in
        --quick) quick=true ;;
        --data=*) data=${arg#--data=} ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "run_all.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/bench_all.XXXXXX")}
mkdir -p "$WORK" benchmarks/results
echo "run_all.sh: work folder $WORK"
if [ -z "$data" ]; then
    data=$WORK/sample
    [ -d "$data/train" ] || "$PYTHON" -m seresnext.sample_data --out "$data" --overwrite
fi
if $quick; then
    repeats=1; batches=1,16; steps=2
else
    repeats=3; batches=1,4,8,16,32; steps=3
fi
# The training step at 224 (the headline), then at the sample run's 64 px.
"$PYTHON" benchmarks/bench_train.py --size 224 --batch 32 --steps "$steps" --repeats "$repeats" \
    --workdir "$WORK/train224" --json benchmarks/results/train_224.json
"$PYTHON" benchmarks/bench_train.py --size 64 --batch 32 --steps $((steps * 3)) --repeats "$repeats" \
    --workdir "$WORK/train64" --json benchmarks/results/train_64.json
# where the 224 px step's time goes (the gap to the matmul peak)
"$PYTHON" benchmarks/profile_train.py --size 224 --batch 32 --json benchmarks/results/profile_train.json
# the 1x1 convolutions on small maps as oneDNN convolutions or as matmuls (PointwiseConv2d)
"$PYTHON" benchmarks/bench_pointwise.py --sizes 64,224 --batch 32 --repeats $((repeats + 1)) \
    --json benchmarks/results/pointwise.json
"$PYTHON" benchmarks/bench_data.py --data "$data" --repeats "$repeats" --workdir "$WORK/data" \
    --json benchmarks/results/data.json
"$PYTHON" benchmarks/bench_preprocess.py --images "$data/val_flat" --repeats "$repeats" \
    --json benchmarks/results/preprocess.json
"$PYTHON" benchmarks/bench_runner.py --images "$data/val_flat" --batches "$batches" --repeats "$repeats" --compare-regroup \
    ${RUNNER_ARGS:-} --json benchmarks/results/runner.json
"$PYTHON" - <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from common import machine_header, run_header
parts = []
for name in ("train_224", "train_64", "profile_train", "pointwise", "data", "preprocess", "runner"):
    path = Path("benchmarks/results") / f"{name}.json"
    if path.exists():
        report = json.loads(path.read_text())
        parts.append(f"## {report['benchmark']} ({name}.json)\n\n{machine_header(report['machine'])}\n"
                     f"{run_header(report.get('run'))}\n\n{report['table']}\n")
Path("benchmarks/results/REPORT.md").write_text("\n".join(parts))
print("wrote benchmarks/results/REPORT.md")
EOF
