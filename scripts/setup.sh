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
# uldm itself (editable) and its dependencies: again only when setup.cfg or pyproject.toml changed since the last
# install, so scripts that set up and run in parallel (scripts/ablation_pretraining.sh) do not reinstall at once.
stamp=.venv/.uldm-install-stamp
wanted=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || ! python -c "import uldm" 2>/dev/null; then
    python -m pip install --quiet -e ".[dev]"
    python -c "from uldm import feasibility_kernel; feasibility_kernel.warm_up()"  # compiled once, into numba's cache
    echo "$wanted" > "$stamp"
fi
