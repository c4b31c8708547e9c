#!/usr/bin/env bash
# The ULDM rows of the cross-validation, fold by fold (benchmarks/crossval.py): for each fold, the current recipe
# (arm b at the cross-validation recipe) and the new design (the same with the scene mixture prior) are trained and
# scored before the next fold starts, so a stopped run leaves paired folds and continues where it stopped.
#   bash scripts/crossval_uldm.sh [FOLD ...]          # default: 0 1 2 3 4
# Trained stages go to $ULDM_RUNS/crossval (default runs/crossval); scores to benchmarks/results/crossval/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
source scripts/setup.sh
FOLDS=("$@")
[ ${#FOLDS[@]} -gt 0 ] || FOLDS=(0 1 2 3 4)
for fold in "${FOLDS[@]}"; do
    python benchmarks/crossval.py --recipe uldm-b uldm-scene-mixture --folds "$fold" --train
done
python benchmarks/crossval.py --recipe uldm-b uldm-b-prior-only uldm-scene-mixture uldm-scene-mixture-prior-only
