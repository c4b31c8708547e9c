#!/usr/bin/env bash
# The GPU figures of benchmarks/inference_speed.py in one command, on a machine with a CUDA GPU and PyTorch:
#     bash scripts/gpu_speed.sh [OUT_DIR]          (default outputs/gpu-speed; $OUT when set)
# 1. installs uldm (editable, no dependency resolution) and what the image lacks, from .whl/ when there is no
#    registry (`bash scripts/gpu_wheels.sh` fills it beforehand), else from the registry;
# 2. the inference GPU tests (half precision of the shipped models, GPU = CPU, no sync inside the denoising loop,
#    the CLI on the GPU);
# 3. the benchmark at 512 x 512, bf16: the shipped ULDM and SD-2.1-sized ULDMs with random weights, one with an
#    AutoencoderKL SpaAE and one with an AutoencoderTiny; eager and channels_last; then torch.compile of the
#    AutoencoderTiny one (the target configuration). About 9 minutes at most (timeouts 120 + 220 + 200 s).
# Every step writes its own JSON and log into OUT_DIR, so a step that runs out of time leaves the others' figures.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-${OUT:-outputs/gpu-speed}}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

missing=()
for module in diffusers colour png importlib_metadata thop; do
    "$python" -c "import $module" 2>/dev/null || missing+=("$module")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing what is missing: ${missing[*]}"
    if [ -d .whl ]; then
        "$python" -m pip install --quiet --no-deps --no-index --find-links .whl .whl/*.whl
    else
        "$python" -m pip install --quiet diffusers colour-science pypng importlib_metadata thop
    fi
fi
"$python" -c "import uldm.pipelines" 2>/dev/null || "$python" -m pip install --quiet --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"

timeout 120 "$python" -m pytest -q -x tests/test_gpu.py -k "half or gives_the or never_waits or cli_runs" 2>&1 |
    tee "$out/gpu_tests.log"

bench() {  # NAME TIMEOUT ARGS...: one benchmark run, its JSON and log under OUT_DIR
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$python" benchmarks/inference_speed.py "$@" --json "$out/$name.json" 2>&1 | tee "$out/$name.log"
}
bench speed_bf16 220 --model uldm=checkpoints/uldm-cave --model sd21-tiny=scaffold:sd21:taesd \
    --model sd21-kl=scaffold:sd21:kl --resolution 512 --dtype bf16 --batch-size 1 8 32 --channels-last --profile
bench speed_bf16_compiled 200 --model sd21-tiny=scaffold:sd21:taesd --resolution 512 --dtype bf16 \
    --batch-size 1 32 --channels-last --compile
ls -l "$out"
