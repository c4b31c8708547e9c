#!/usr/bin/env bash
# Create .venv (once) and install uldm with its dependencies. Sourced by test.sh and demo.sh.
# torch 2.13.0 goes in first: this pins the CPU build; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION:-2.13.0}')" 2>/dev/null; then
    python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
fi
python -m pip install --quiet -e ".[dev]"
