#!/usr/bin/env bash
# Install what the project needs from the package registries.
#   bash scripts/install.sh [--runtime-only]                  create ./.venv (or $VENV) with the pinned torch
#   bash scripts/install.sh [--runtime-only] --python=PATH    use PATH's own torch (checked first) and install
#                                                             the rest into its environment, torch untouched
# --runtime-only installs requirements.txt; without it requirements-test.txt as well (pytest, the references).
# BASE_PYTHON (default python3) is the interpreter ./.venv is created with.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BASE_PYTHON=${BASE_PYTHON:-python3}
runtime_only=false
own=""
for arg in "$@"; do
  case "$arg" in
    --runtime-only) runtime_only=true ;;
    --python=*) own=${arg#*=} ;;
    *) echo "install.sh: error: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
req=requirements-test.txt
$runtime_only && req=requirements.txt

if [ -n "$own" ]; then
  if ! check=$("$own" scripts/check_torch.py 2>&1); then
    echo "install.sh: error: $own: $check" >&2
    exit 1
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # the rest of the requirements without the torch pins; torchvision unpinned if it is missing
  grep -h -v -E '^\s*(-r |torch==|torchvision==)' requirements.txt $([ "$req" = requirements.txt ] || echo "$req") \
    > "$work/requirements.txt"
  "$own" -c "import torchvision" 2>/dev/null || echo torchvision >> "$work/requirements.txt"
  # keep the installed torch (and torch_npu, torchvision) exactly as they are
  "$own" - > "$work/constraints.txt" <<'PY'
from importlib import metadata
for name in ("torch", "torch_npu", "torchvision"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
PY
  "$own" -m pip install -q --disable-pip-version-check -r "$work/requirements.txt" -c "$work/constraints.txt"
  echo "installed the rest of $req for $own ($check)"
  exit 0
fi

stamp="$VENV/.installed-$(cat requirements.txt $req | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$BASE_PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r "$req"
touch "$stamp"
echo "installed $req into $VENV"
