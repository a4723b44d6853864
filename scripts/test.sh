#!/usr/bin/env bash
# The test command: installs what it needs into ./.venv, lints (ruff, rules in pyproject.toml), then runs the
# pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest -q "$@" tests
