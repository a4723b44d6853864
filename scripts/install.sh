#!/usr/bin/env bash
# Create ./.venv (or $VENV) and install the runtime and test requirements from the package registries.
# Usage: bash scripts/install.sh [--runtime-only]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
req=requirements-test.txt
[ "${1:-}" = "--runtime-only" ] && req=requirements.txt
stamp="$VENV/.installed-$(cat requirements.txt $req | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r "$req"
touch "$stamp"
echo "installed $req into $VENV"
