"""Quality vs denoising steps, and CPU time per image, for a diffusion checkpoint on a CAVE split (val by default).

    python benchmarks/steps_curve.py --checkpoint checkpoints/uldm-cave [--steps 1 2 5 10 20] [--plot out.png]
        [--split val|train] [--skip-512]

Prints a table (steps, PSNR, SAM, MRAE, RMSE, max RGB error, seconds per 256x256 image), then the seconds for
one 512x512 image at the checkpoint's default steps. RGB comes from the ground truth rendered with the
checkpoint's own camera (clean, linear).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from uldm.checkpoints import load_pipeline, PipelineReconstructor
from uldm.data import cave_split, default_cave_root
from uldm.evaluation import ROW_KEYS, evaluate
from uldm.io import save_json
from uldm.metrics import format_table


def time_one_512_image(pipeline) -> None:
    """Seconds for one 512x512 image at the checkpoint's defaults (after a small warm-up run)."""
    image = np.random.default_rng(0).random((512, 512, 3)).astype(np.float32) * 0.8
    default = PipelineReconstructor(pipeline)
    default(image[:64, :64])  # warm-up
    start = time.perf_counter()
    default(image)
    print(f"one 512x512 image at the default {pipeline.config.default_denoising_steps} steps: "
          f"{time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", type=Path, default=default_cave_root())
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--plot", type=Path, help="write the quality-vs-steps curve here (PNG)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="train: whether the curve's shape holds on the scenes the model was fitted on")
    parser.add_argument("--skip-512", action="store_true", help="leave out the 512x512 timing")
    args = parser.parse_args()

    pipeline = load_pipeline(args.checkpoint)
    scenes = cave_split(args.data)[args.split]
    rows = {}
    for steps in args.steps:
        result = evaluate(PipelineReconstructor(pipeline, steps=steps), scenes, pipeline.camera, progress=False)
        rows[f"{steps} steps"] = result.row((*ROW_KEYS, "seconds"))
    print(f"CAVE {args.split} ({len(scenes)} scenes, 256x256), {torch.get_num_threads()} CPU threads, "
          f"checkpoint {args.checkpoint}")
    print(format_table(rows, first_column="steps", mean_row=False))

    if not args.skip_512:
        time_one_512_image(pipeline)
    if args.plot is not None:
        from uldm.visualize import plot_curve

        plot_curve(args.plot, args.steps, {"PSNR (dB)": [rows[f"{s} steps"]["psnr"] for s in args.steps]},
                   xlabel="denoising steps", ylabel="PSNR (dB)", title=f"ULDM on CAVE {args.split}: quality vs steps")
        print(f"wrote {args.plot}")
    if args.json is not None:
        save_json(rows, args.json)


if __name__ == "__main__":
    main()
