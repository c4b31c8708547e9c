#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with the pure-Python wheels uldm needs beyond a CUDA PyTorch image (diffusers,
# colour-science, pypng, importlib_metadata, thop), at this environment's versions, for a GPU machine that cannot
# reach a package registry: run it here, then `bash scripts/gpu_speed.sh` there with .whl carried along.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
packages=()
for name in diffusers colour-science pypng importlib_metadata thop; do
    packages+=("$name==$(python -c "import importlib.metadata as m; print(m.version('$name'))")")
done
python -m pip download --quiet --no-deps --only-binary=:all: -d .whl "${packages[@]}"
ls .whl
