#!/usr/bin/env bash
# The test command: installs what it needs into ./.venv, then runs the pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q "$@" tests
