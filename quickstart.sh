#!/usr/bin/env bash
# The main job in one command: install, generate the sample ImageNet (unless --data_path= is given), train
# with main.py through test/train_full_1p.sh, export to ONNX, run the offline chain in both input modes,
# score it, and print a summary. Rerunning reuses the stages whose inputs did not change. See README.md.
#   bash quickstart.sh [--data_path=DIR [--recipe=1p|8p]] [--work_dir=DIR] [--epochs=N] [--batch_size=N]
#                      [--accum_steps=K] [--force] [--from=STAGE]
# Python: $PYTHON when set, else the active virtualenv or conda environment, when its torch works (checked
# here; the rest of requirements.txt is installed into it, torch untouched); else ./.venv with the pinned torch.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
python=""
origin=""
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON; origin="PYTHON=$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ] && [ "$(cd "$VIRTUAL_ENV" && pwd -P)" != "$(cd "$VENV" 2>/dev/null && pwd -P)" ]; then
  python=$VIRTUAL_ENV/bin/python; origin="the active virtualenv $VIRTUAL_ENV"
elif [ -n "${CONDA_PREFIX:-}" ]; then
  python=$CONDA_PREFIX/bin/python; origin="the active conda environment $CONDA_PREFIX"
fi
if [ -n "$python" ]; then
  if check=$("$python" scripts/check_torch.py 2>&1); then
    echo "[quickstart] using $python ($origin): $check"
    bash scripts/install.sh --runtime-only --python="$python"
  elif [ -n "${PYTHON:-}" ]; then
    echo "[quickstart] error: PYTHON=$PYTHON: $check" >&2
    exit 1
  else
    echo "[quickstart] not using $origin: $check; using the pinned $VENV instead"
    python=""
  fi
fi
if [ -z "$python" ]; then
  echo "[quickstart] setting up $VENV (first time: a few minutes) ..."
  VENV=$VENV bash scripts/install.sh --runtime-only
  python=$VENV/bin/python
fi
export PYTHON=$python
exec "$python" -m seresnext.pipeline "$@"
