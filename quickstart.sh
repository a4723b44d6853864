#!/usr/bin/env bash
# The main job in one command: install, generate the sample ImageNet (unless --data_path= is given), train
# with main.py through test/train_full_1p.sh, export to ONNX, run the offline chain in both input modes,
# score it, and print a summary. Rerunning reuses finished stages. See README.md.
#   bash quickstart.sh [--data_path=DIR] [--work_dir=DIR] [--epochs=N] [--force] [--from=STAGE]
set -euo pipefail
cd "$(dirname "$0")"
echo "[quickstart] setting up ./.venv (first time: a few minutes) ..."
bash scripts/install.sh --runtime-only
exec .venv/bin/python -m seresnext.pipeline "$@"
