#!/usr/bin/env bash
# Set up .venv if needed, then train a LoRA on the tiny CogVideoX model and synthetic videos (CPU, no downloads).
# Extra arguments are training flags, e.g. --max_train_steps 100.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${BLUEBERRY_VENV:-.venv}/bin/blueberry-video" demo "$@"
