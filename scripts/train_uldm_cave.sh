#!/usr/bin/env bash
# Train a CAVE ULDM end to end, every stage from nothing, on the 2-core CPU:
#   1. stage 1: the SpeUAE (stages/configs/speuae_cave_fast.yaml) on the split's training scenes;
#   2. the Stable Diffusion scaffold: SD-architecture UNet (random) + the TAESD3 SpaAE (../shared/models/taesd);
#   3. RGB pre-training of the UNet on photographs (stages/configs/rgb_pretrain_cpu.yaml; arm c only);
#   4. the SpaAE adapted to CAVE RGB and code images (stages/configs/spaae_cave_taesd3.yaml);
#   5. stage 2 (stages/configs/uldm_cave_taesd3.yaml) from the arm's starting point.
# Arms of the pretraining ablation (identical data, steps, batch and seed; only where the weights start differs):
#   a  random UNet + TAESD3-architecture SpaAE with random weights, trained on CAVE (nothing pretrained)
#   b  random UNet + pretrained TAESD3 SpaAE, adapted
#   c  RGB-pretrained UNet + pretrained TAESD3 SpaAE, adapted (the shipped recipe)
# Finished stages are skipped (their output folder exists; outputs are written atomically) and unfinished ones
# resume from their last checkpoint, so a stopped run continues when the script is run again.
#
#   bash scripts/train_uldm_cave.sh                           # arm c, standard split, seed 0 -> runs/cave-std/c-seed0
#   bash scripts/train_uldm_cave.sh --arm a --split b --seed 1
#   bash scripts/train_uldm_cave.sh --ship                    # ... then install it as checkpoints/uldm-cave
#   bash scripts/train_uldm_cave.sh --split cv3 --recipe crossval --runs runs/crossval/uldm-c
#                                     # fold 3 of the cross-validation (benchmarks/crossval.py), at its cheaper recipe
#                                     # (--split cv3i: fold 3's inner split, 15 of its training scenes)
#   bash scripts/train_uldm_cave.sh --camera srgb --ship      # the model for sRGB photos -> checkpoints/uldm-srgb
# --camera NAME (a preset of `uldm info`, default nikon5100): every CAVE stage (SpeUAE, SpaAE adaptation, stage 2)
# renders its RGB with that camera (`--set camera=NAME`), in runs/cave-<split>-<NAME> (nikon5100: runs/cave-<split>);
# the SD scaffold and the RGB pre-training see no spectra and are shared. With --ship, a camera other than nikon5100
# is first scored (benchmarks/pretraining_ablation.py --camera NAME) and installed as checkpoints/uldm-<NAME>.
# --recipe crossval: the same stages with fewer steps (SpeUAE 4000, RGB pre-training 500 on one cached epoch of
# latents, SpaAE adaptation 100, stage 2 300), identical for every
# fold (benchmarks/crossval.py states it in its table); the RGB pre-training of the UNet (no CAVE data) is shared by
# the folds when --pretrained-runs names one folder for all of them.
# --code-prior scene_mixture: stage 2 with the scene mixture prior instead of the config's regression, written to
# <arm>-seed<seed>-scene_mixture beside the default (the stages before it are shared).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ARM=c SPLIT=std SEED=0 SHIP=0 RUNS=runs RECIPE=full PRETRAINED_RUNS="" CODE_PRIOR="" CAMERA=nikon5100
while [ $# -gt 0 ]; do
    case "$1" in
        --arm) ARM="$2"; shift 2 ;;
        --split) SPLIT="$2"; shift 2 ;;
        --seed) SEED="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --recipe) RECIPE="$2"; shift 2 ;;
        --code-prior) CODE_PRIOR="$2"; shift 2 ;;
        --camera) CAMERA="$2"; shift 2 ;;
        --pretrained-runs) PRETRAINED_RUNS="$2"; shift 2 ;;
        --ship) SHIP=1; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$ARM" in a|b|c) ;; *) echo "--arm must be a, b or c" >&2; exit 2 ;; esac
case "$SPLIT" in
    std) TRAIN=train VAL=val ;;
    b) TRAIN=stages/configs/splits/cave_b_train.txt VAL=stages/configs/splits/cave_b_val.txt ;;
    cv[0-4]) TRAIN=stages/configs/splits/cv5_fold${SPLIT#cv}_train.txt VAL=stages/configs/splits/cv5_fold${SPLIT#cv}_val.txt ;;
    cv[0-4]i) FOLD=${SPLIT#cv}; FOLD=${FOLD%i}  # the fold's inner split: 15 of its training scenes, 5 held out
              TRAIN=stages/configs/splits/cv5_fold${FOLD}_inner_train.txt VAL=stages/configs/splits/cv5_fold${FOLD}_inner_val.txt ;;
    *) echo "--split must be std, b, cv0 ... cv4 or cv0i ... cv4i" >&2; exit 2 ;;
esac
case "$RECIPE" in
    full) SPEUAE_STEPS=() PRETRAIN_STEPS=() SPAAE_STEPS=() STAGE2_STEPS=() ;;
    crossval) SPEUAE_STEPS=(--set max_train_steps=4000) PRETRAIN_STEPS=(--set max_train_steps=500 --set latent_cache_epochs=1)
              SPAAE_STEPS=(--set max_train_steps=100) STAGE2_STEPS=(--set max_train_steps=300 --set checkpointing_steps=100) ;;
    *) echo "--recipe must be full or crossval" >&2; exit 2 ;;
esac
if [ "$SHIP" = 1 ] && [ "$SPLIT" != std ]; then echo "--ship takes the standard split" >&2; exit 2; fi
case "$CAMERA" in
    *[!A-Za-z0-9.+-]*|"") echo "--camera takes a preset name (letters, digits, . + -; see uldm info)" >&2; exit 2 ;;
esac

# shellcheck disable=SC1091
source scripts/setup.sh
SPLIT_DIR="$RUNS/cave-$SPLIT"
CHECKPOINT=checkpoints/uldm-cave
if [ "$CAMERA" != nikon5100 ]; then
    SPLIT_DIR="$RUNS/cave-$SPLIT-$CAMERA"
    CHECKPOINT="checkpoints/uldm-$CAMERA"
fi
CAMERA_SET=(--set "camera=$CAMERA")
SHARED="${PRETRAINED_RUNS:-$RUNS}"  # split-independent stages: the SD scaffold and the UNet's RGB pre-training
SCENES=(--set "train_scenes=$TRAIN" --set "val_scenes=$VAL")

run_stage() {  # run_stage OUTPUT COMMAND...: skip when OUTPUT exists, else run (resuming from checkpoints)
    local output="$1"; shift
    if [ -e "$output" ]; then
        echo "== done: $output"
    else
        echo "== $output: $*"
        "$@"
    fi
}

# 1. SpeUAE on the split's training scenes
run_stage "$SPLIT_DIR/speuae/speuae" python stages/train_speuae.py --config stages/configs/speuae_cave_fast.yaml \
    --set "output_dir=$SPLIT_DIR/speuae" "${SCENES[@]}" "${CAMERA_SET[@]}" "${SPEUAE_STEPS[@]}" --resume_from_checkpoint latest

# 2. the SD scaffold: the UNet's random start is the same (seed 0) whatever the SpaAE's weights
if [ "$ARM" = a ]; then
    BASE="$SHARED/sd-taesd3-random"
    run_stage "$BASE" python -m uldm.sd_scaffold "$BASE" base --vae taesd3 --vae-init random --prediction-type sample
    ADAPT=(--set "sd_folder=$BASE" --set learning_rate=1.0e-3 --set latent_anchor_weight=0)
    SPAAE="$SPLIT_DIR/spaae-random"
else
    BASE="$SHARED/sd-taesd3"
    run_stage "$BASE" python -m uldm.sd_scaffold "$BASE" base --vae taesd3 --prediction-type sample
    ADAPT=(--set "sd_folder=$BASE")
    SPAAE="$SPLIT_DIR/spaae-taesd3"
fi

# 3. RGB pre-training of the UNet on photographs (split-independent: no CAVE data)
if [ "$ARM" = c ]; then
    run_stage "$SHARED/rgb-pretrain/sd" python stages/pretrain_rgb.py --config stages/configs/rgb_pretrain_cpu.yaml \
        --set "output_dir=$SHARED/rgb-pretrain" --set "sd_folder=$BASE" "${PRETRAIN_STEPS[@]}" --resume_from_checkpoint latest
fi

# 4. the SpaAE adapted to the split's RGB and code images
run_stage "$SPAAE/sd" python stages/pretrain_spaae.py --config stages/configs/spaae_cave_taesd3.yaml \
    --set "output_dir=$SPAAE" --set "speuae_path=$SPLIT_DIR/speuae/speuae" "${SCENES[@]}" "${ADAPT[@]}" \
    "${CAMERA_SET[@]}" "${SPAAE_STEPS[@]}" --resume_from_checkpoint latest

# 5. stage 2 from the arm's UNet, with the adapted SpaAE
case "$ARM" in
    a) START=(--set "pretrained_model_name_or_path=$SPAAE/sd" --set pretrained_vae_model_name_or_path=null \
              --set base_model=null) ;;  # nothing pretrained: no base model for its card
    b) START=(--set "pretrained_model_name_or_path=$SPAAE/sd" --set pretrained_vae_model_name_or_path=null) ;;
    c) START=(--set "pretrained_model_name_or_path=$SHARED/rgb-pretrain/sd" --set "pretrained_vae_model_name_or_path=$SPAAE/sd") ;;
esac
OUT="$SPLIT_DIR/$ARM-seed$SEED"
PRIOR=()
if [ -n "$CODE_PRIOR" ]; then  # another code prior than the config's: its own stage 2, beside the default one
    OUT="$OUT-$CODE_PRIOR"
    PRIOR=(--set "code_prior=$CODE_PRIOR")
fi
run_stage "$OUT/pipeline" python stages/train_uldm.py --config stages/configs/uldm_cave_taesd3.yaml \
    --set "output_dir=$OUT" --set "speuae_path=$SPLIT_DIR/speuae/speuae" "${SCENES[@]}" "${START[@]}" \
    --set "seed=$SEED" "${CAMERA_SET[@]}" "${STAGE2_STEPS[@]}" "${PRIOR[@]}" --resume_from_checkpoint latest
echo "== pipeline: $OUT/pipeline"

# 6. install as the shipped checkpoint, with a model card generated from the runs' own records
if [ "$SHIP" = 1 ] && [ "$CAMERA" = nikon5100 ]; then  # its card's ablation: scripts/ablation_pretraining.sh
    python scripts/ship_uldm_cave.py "$OUT/pipeline" "$CHECKPOINT" --runs "$RUNS"
elif [ "$SHIP" = 1 ]; then  # another camera: its card's scores come from scoring its own runs
    python benchmarks/pretraining_ablation.py --runs "$RUNS" --splits std --camera "$CAMERA" --json "$SPLIT_DIR/scores.json"
    python scripts/ship_uldm_cave.py "$OUT/pipeline" "$CHECKPOINT" --runs "$RUNS" --ablation "$SPLIT_DIR/scores.json"
fi
