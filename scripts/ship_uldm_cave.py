"""Install a trained CAVE ULDM pipeline as a shipped checkpoint, with a model card built from the runs' records.

    python scripts/ship_uldm_cave.py runs/cave-std/c-seed0/pipeline checkpoints/uldm-cave --runs runs \\
        --ablation benchmarks/results/pretraining_ablation.json
    python scripts/ship_uldm_cave.py runs/cave-std-srgb/c-seed0/pipeline checkpoints/uldm-srgb --runs runs \\
        --ablation runs/cave-std-srgb/scores.json      # a model for another camera (train_uldm_cave.sh --camera srgb)

The card is generated, never typed: components and their origin from the pipeline's configs and the run folders
that `scripts/train_uldm_cave.sh` wrote (each stage's logs/run_summary.json: steps, samples, seconds, device), the
metrics and the ablation table from the JSON that `benchmarks/pretraining_ablation.py` wrote.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from uldm import SpectralReconstructionPipeline
from uldm.camera import SRGB_OBSERVER
from uldm.checkpoints import checkpoint_camera_name
from uldm.hub import write_model_card
from uldm.io import atomic_folder
from uldm.models.taesd import TAESD_VARIANTS
from uldm.training import read_budget
from uldm.pipelines.remote_code import write_remote_code

ARM_NAMES = {"a": "nothing pretrained", "b": "pretrained SpaAE", "c": "pretrained SpaAE + RGB-pretrained UNet"}
# <runs>/cave-std[-<camera>]/<arm>-seed0/pipeline: train_uldm_cave.sh's folders (the camera's name when not nikon5100)
RUN_FOLDER = re.compile(r"^cave-std(?:-(?P<camera>[\w.+-]+))?$")


def parameter_count(weights: Path) -> int:
    """Parameters in a safetensors file, from its header."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())


def run_budget(folder: Path) -> str:
    """'N steps, M samples, S min on DEVICE' of a run folder (every call of its trainer summed)."""
    budget = read_budget(folder)
    if not budget:
        return "budget not recorded"
    return f"{budget['steps']} steps, {budget['samples']:,} samples, {budget['seconds'] / 60:.0f} min on {budget['device']}"


def ablation_table(ablation: dict[str, Any]) -> str:
    lines = ["| split (val scenes) | model | PSNR (dB) | SAM (°) | MRAE | RMSE |", "| --- | --- | --- | --- | --- | --- |"]
    for split, result in ablation["splits"].items():
        scenes = ", ".join(name.removesuffix("_ms") for name in result["val_scenes"])
        for label, row in result["rows"].items():
            arm = label.split(" seed ")[0]
            name = f"{label}: {ARM_NAMES[arm]}" if arm in ARM_NAMES else label
            lines.append(f"| {split} ({scenes}) | {name} | {row['psnr']:.2f} | {row['sam']:.2f} | {row['mrae']:.4f} "
                         f"| {row['rmse']:.4f} |")
    if not ablation["verdicts"]:  # one arm scored (a model for another camera): no comparisons
        return "\n".join(lines)
    lines += ["", "| comparison | PSNR difference per split (dB) | seed spread (dB) | counts |", "| --- | --- | --- | --- |"]
    for name, verdict in ablation["verdicts"].items():
        means = ", ".join(f"{split} {value:+.2f}" for split, value in verdict["psnr_mean_difference"].items())
        spread = "-" if verdict["seed_spread_psnr"] is None else f"{verdict['seed_spread_psnr']:.2f}"
        lines.append(f"| {name} | {means} | {spread} | {'yes' if verdict['counts'] else 'no'} |")
    return "\n".join(lines)


def support_sentence(arm: str, ablation: dict[str, Any]) -> str:
    """What the ablation's verdicts say about the shipped arm, from the JSON (never typed in)."""
    verdicts = ablation["verdicts"]
    if "c - a" not in verdicts:  # the ablation's arms were trained for one camera only (the Nikon 5100's card)
        return ""

    def said(name: str) -> str:
        verdict = verdicts[name]
        means = ", ".join(f"{split} {value:+.2f} dB" for split, value in verdict["psnr_mean_difference"].items())
        return f"{name}: {means} ({'counts' if verdict['counts'] else 'does not count'})"

    sentences = [f"Against the seed spread of {verdicts['c - a']['seed_spread_psnr']:.2f} dB: "
                 + "; ".join(said(name) for name in ("c - a", "b - a", "c - b") if name in verdicts) + "."]
    if arm == "c" and verdicts.get("c - a", {}).get("counts") and not verdicts.get("c - b", {}).get("counts"):
        sentences.append("Pretrained components beat none on both splits; the UNet's RGB pre-training on top of the "
                         "pretrained SpaAE is not separated from b by these runs, so c ships as the method's recipe "
                         "(same architecture and inference cost as b), not for a val figure.")
    return " ".join(sentences)


def card_metadata(arm: str, ablation: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """What the card's front matter adds to the text: the hub id of the weights the arm started from (TAESD3's, for
    the arms with a pretrained SpaAE), the dataset, and the val metrics as the hub's model-index."""
    scenes = ", ".join(name.removesuffix("_ms") for name in ablation["splits"]["std"]["val_scenes"])
    return {"base_model": None if arm == "a" else TAESD_VARIANTS["taesd3"]["hub_id"], "datasets": ["cave"],
            "evaluation": {"dataset": f"CAVE, standard split, val scenes ({scenes})", "dataset_type": "cave",
                           "split": "validation", "metrics": metrics}}


def camera_phrase(camera: str) -> str:
    """What the card says the model is for."""
    if camera == SRGB_OBSERVER:
        return ("sRGB photographs (the sRGB observer: the CIE 1931 colour matching functions under D65, in linear "
                "sRGB)")
    return f"the {camera.removesuffix(' (NPL)')} camera"


def card_text(pipeline: Path, runs: Path, arm: str, ablation: dict[str, Any], processing_resolution: int,
              camera: str, camera_option: Optional[str] = None) -> tuple[str, dict[str, float], str]:
    """(description, metrics, training notes) for the card of a model for `camera`; `camera_option`:
    train_uldm_cave.sh's --camera when not the default (then `ablation` scored that camera's runs only)."""
    std = ablation["splits"]["std"]
    row = std["rows"][f"{arm} seed 0"]
    base = std["rows"][next(iter(std["rows"]))]
    index = json.loads((pipeline / "model_index.json").read_text())
    unet = json.loads((pipeline / "unet" / "config.json").read_text())
    params = {name: parameter_count(pipeline / name / "diffusion_pytorch_model.safetensors")
              for name in ("unet", "vae", "speuae")}
    split = pipeline.parent.parent  # <runs>/cave-std[-<camera>]
    arm_sentence = (f"It is arm **{arm}** of the RGB-pretraining ablation ({ARM_NAMES[arm]})." if camera_option is None
                    else f"It is trained with the recipe of arm **{arm}** of the Nikon 5100 model's RGB-pretraining "
                         f"ablation ({ARM_NAMES[arm]}).")
    description = f"""A `SpectralReconstructionPipeline` (RGB -> 31 bands, 400-700 nm) for {camera_phrase(camera)}, trained on the
21 training scenes of the CAVE database's standard split (every scene but balloons, face, jelly_beans and stuffed_toys),
clean linear RGB. {" ".join(filter(None, (arm_sentence, support_sentence(arm, ablation))))}

Components and where their weights come from:
- **SpaAE** (`vae/`, `{index['vae'][1]}`, {params['vae']:,} parameters, 16 latent channels at 1/8 resolution): TAESD3, the
  tiny autoencoder of the Stable Diffusion 3 latent space by Ollin Boer Bohan (MIT licence, github.com/madebyollin/taesd),
  converted to diffusers' AutoencoderTiny by `uldm.models.taesd`, then adapted to CAVE RGB and SpeUAE code images
  (stages/configs/spaae_cave_taesd3.yaml: {run_budget(split / 'spaae-taesd3')}).
- **UNet** (`unet/`, Stable Diffusion architecture, {params['unet']:,} parameters, `block_out_channels`
  {unet['block_out_channels']}): {'random weights, ' if arm != 'c' else ''}{'pre-trained with the Stable Diffusion objective on 1,680 natural photographs (an ImageNet validation sample, BSDS500, Urban100, Sun-Hays 80; stages/configs/rgb_pretrain_cpu.yaml: ' + run_budget(runs / 'rgb-pretrain') + '), ' if arm == 'c' else ''}then trained as the ULDM
  (stage 2, stages/configs/uldm_cave_taesd3.yaml: {run_budget(pipeline.parent)}).
- **SpeUAE** (`speuae/`, {params['speuae']:,} parameters): stage 1, stages/configs/speuae_cave_fast.yaml
  ({run_budget(split / 'speuae')}).
- **code prior** (`code_prior/`): the root-polynomial regression (degree 2) fitted on the training scenes; the
  diffusion model generates 3x the code's residual from the regression's code.

On the standard split's 4 val scenes, at its default of one denoising step: **{row['psnr']:.2f} dB PSNR, {row['sam']:.2f}°
SAM, MRAE {row['mrae']:.4f}** (root-polynomial baseline fitted on the same training scenes: {base['psnr']:.2f} dB,
{base['sam']:.2f}°, MRAE {base['mrae']:.4f}). Every output re-renders to its input RGB to float precision (max
{row['max_rgb_error']:.1e}). Photos larger than {processing_resolution} pixels on their longer side run the diffusion
at that size (`default_processing_resolution`, set when the pipeline was installed; the rest of the work runs at
full size, band by band); smaller ones at their own."""
    metrics = {"val PSNR (dB)": round(row["psnr"], 2), "val SAM (deg)": round(row["sam"], 2),
               "val MRAE": round(row["mrae"], 4), "val RMSE": round(row["rmse"], 4),
               "max RGB re-projection error": float(f"{row['max_rgb_error']:.1e}")}
    training = f"""Reproduce every stage, from nothing, on a 2-core CPU (the CAVE scenes, the photographs and the TAESD weights in
their default data folders; see the repository's docs/training.md):

```bash
bash scripts/train_uldm_cave.sh --arm {arm}{f' --camera {camera_option}' if camera_option else ''} --ship
```

{scores_section(ablation, camera_option)}"""
    return description, metrics, training


def scores_section(ablation: dict[str, Any], camera_option: Optional[str]) -> str:
    """The card's table of scores: the RGB-pretraining ablation, or for another camera its own runs' scores."""
    if camera_option is not None:
        return f"""### Scores

`python benchmarks/pretraining_ablation.py --splits std --camera {camera_option}` scored the runs for this camera on the
standard split's val scenes (RGB rendered with its response), once per pipeline, beside the root-polynomial baseline
fitted on the same training scenes.

{ablation_table(ablation)}"""
    return f"""### The RGB-pretraining ablation

Arms a / b / c share data, steps, batch, seed and every setting; only where their weights start differs.
`bash scripts/ablation_pretraining.sh` trains them on both splits and scores them
(`python benchmarks/pretraining_ablation.py --json benchmarks/results/pretraining_ablation.json`); each val set was
scored once per pipeline. A difference counts only if its sign holds on both splits and it exceeds the run-to-run
spread between two seeds of one arm.

{ablation_table(ablation)}"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", type=Path,
                        help="the stage-2 pipeline folder, <runs>/cave-std[-<camera>]/<arm>-seed0/pipeline")
    parser.add_argument("destination", type=Path, help="e.g. checkpoints/uldm-cave (checkpoints/uldm-srgb for sRGB)")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--ablation", type=Path, default=Path("benchmarks/results/pretraining_ablation.json"))
    parser.add_argument("--processing-resolution", type=int, default=512,
                        help="the shipped pipeline's default: larger photos run the diffusion with their longer side "
                             "at this (0: native; CAVE's 256 x 256 scenes are native either way)")
    args = parser.parse_args(argv)
    match = re.match(r"^([abc])-seed0$", args.pipeline.parent.name)
    folder = RUN_FOLDER.match(args.pipeline.parent.parent.name)
    if not match or not folder:
        parser.error(f"{args.pipeline}: expected <runs>/cave-std[-<camera>]/<a|b|c>-seed0/pipeline")
    if not args.ablation.exists():
        parser.error(f"{args.ablation}: no ablation results (run benchmarks/pretraining_ablation.py --json ... first)")
    ablation = json.loads(args.ablation.read_text())
    arm = match[1]
    scored = ablation["splits"]["std"]["rows"].get(f"{arm} seed 0", {}).get("pipeline")
    if scored is None or Path(scored).resolve() != args.pipeline.resolve():
        parser.error(f"{args.ablation} did not score {args.pipeline} (it scored {scored}): run the benchmark again")
    camera = checkpoint_camera_name(args.pipeline)
    description, metrics, training = card_text(args.pipeline, args.runs, arm, ablation, args.processing_resolution,
                                               camera, folder["camera"])
    title = "ULDM on CAVE from pretrained RGB components" + ("" if folder["camera"] is None else
                                                              f", for {camera_phrase(camera).split(' (')[0]}")
    with atomic_folder(args.destination) as tmp:
        shutil.copytree(args.pipeline, tmp, ignore=shutil.ignore_patterns("README.md"))
        index_path = tmp / "model_index.json"
        index = json.loads(index_path.read_text())
        index["default_processing_resolution"] = args.processing_resolution
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        write_remote_code(tmp, SpectralReconstructionPipeline)  # diffusers' generic from_pretrained loads it too
        write_model_card(tmp, title=title, description=description, metrics=metrics, camera=camera,
                         training=training, tags=["cave", "taesd"],
                         **card_metadata(arm, ablation, metrics))
    print(f"shipped {args.pipeline} as {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
