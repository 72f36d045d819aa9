#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
exec "${BLUEBERRY_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@"
