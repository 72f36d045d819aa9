#!/usr/bin/env bash
# Create .venv (once) and install blueberry-video into it with the right PyTorch build.
# Usage: scripts/setup_env.sh [EXTRAS]   e.g. "test" or "all"
#   PYTHON=python3.11            interpreter for the new venv (default: python3.11, else python3)
#   BLUEBERRY_VENV=.venv         where the venv goes
#   TORCH_INDEX_URL=...          index for the CPU torch wheel on machines whose pip would pick a CUDA one
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${BLUEBERRY_VENV:-.venv}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $python"
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"

# torch first, chosen for the machine: pip would otherwise resolve the dependency to a multi-GB
# CUDA build even where there is no GPU. A torch already in the venv is kept as it is.
if ! "$py" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "GPU found: installing the CUDA build of torch"
        "$py" -m pip install torch
    else
        echo "no GPU: installing the CPU build of torch ${TORCH_CPU_VERSION:-2.13.0}"
        "$py" -m pip install "torch==${TORCH_CPU_VERSION:-2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    fi
fi

"$py" -m pip install -q -e ".${extras:+[$extras]}"
