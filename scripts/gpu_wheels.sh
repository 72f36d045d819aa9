#!/usr/bin/env bash
# Put into .whl/ the wheels a lent GPU machine lacks for the benchmarks, at the versions this checkout's venv runs,
# for the machine's Python 3.12; a device call carries them (carry: [".whl"]) and installs them with
# `pip install --no-index --target`. docs/performance.md, "Commands to run on a GPU", has the whole procedure.
#   PYTHON=.venv/bin/python   the interpreter whose package versions to match (default: .venv's, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

version() {
    "$python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || {
        echo "error: $python has no $1 installed: run 'bash scripts/setup_env.sh test' first (or set PYTHON)" >&2
        exit 1
    }
}
packages=()
for name in diffusers datasets bitsandbytes peft dill multiprocess; do
    packages+=("$name==$(version "$name")")
done

rm -rf .whl
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${packages[@]}"
# bitsandbytes ships its library for every CUDA version (43 MB); the machines run CUDA 13, and a call carries at
# most 64 MiB.
zip -q -d .whl/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' \
    'bitsandbytes/libbitsandbytes_rocm*.so' 'bitsandbytes/libbitsandbytes_xpu*.so'
ls .whl
du -sh .whl
