#!/usr/bin/env bash
# The RGB-pretraining ablation on the 2-core CPU: arms a (nothing pretrained), b (pretrained SpaAE) and c (pretrained
# SpaAE + RGB-pretrained UNet) on two CAVE splits (std and b), seed 0, plus a second seed of arms a and c on the
# standard split for the run-to-run spread; then every pipeline scored once on its split's val scenes
# (benchmarks/pretraining_ablation.py). Every arm is one run of scripts/train_uldm_cave.sh (finished stages are
# reused, so the script can be stopped and run again). Two lanes run side by side, one CPU thread each.
#   bash scripts/ablation_pretraining.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
source scripts/setup.sh
mkdir -p runs/logs
lane() {  # lane NAME ARGS...: run the arms one after another, logging to runs/logs/NAME.log
    local name="$1"; shift
    for arms in "$@"; do
        # shellcheck disable=SC2086
        OMP_NUM_THREADS=1 bash scripts/train_uldm_cave.sh $arms
    done > "runs/logs/$name.log" 2>&1
}
{  # first the stages the lanes share: both scaffolds, the RGB pre-training, and arm c on the standard split
    bash scripts/train_uldm_cave.sh --arm c --split std --seed 0
    [ -e runs/sd-taesd3-random ] || python -m uldm.sd_scaffold runs/sd-taesd3-random base --vae taesd3 \
        --vae-init random --prediction-type sample
} > runs/logs/shared-stages.log 2>&1
lane std "--arm a --split std" "--arm b --split std" "--arm c --split std --seed 1" "--arm a --split std --seed 1" &
lane b "--arm a --split b" "--arm b --split b" "--arm c --split b" &
wait
python benchmarks/pretraining_ablation.py --json benchmarks/results/pretraining_ablation.json
