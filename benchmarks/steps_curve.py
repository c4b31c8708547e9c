"""Quality vs denoising steps, and CPU time per image, for a diffusion checkpoint on the CAVE val split.

    python benchmarks/steps_curve.py --checkpoint checkpoints/uldm-cave [--steps 1 2 5 10 20] [--plot out.png]

Prints a table (steps, PSNR, SAM, MRAE, RMSE, max RGB error, seconds per 256x256 image), then the seconds for
one 512x512 image at the checkpoint's default steps. RGB comes from the ground truth rendered with the
checkpoint's own camera (clean, linear).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from uldm.checkpoints import load_pipeline, PipelineReconstructor
from uldm.data import cave_split, default_cave_root
from uldm.evaluation import evaluate
from uldm.metrics import format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", type=Path, default=default_cave_root())
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--plot", type=Path, help="write the quality-vs-steps curve here (PNG)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    pipeline = load_pipeline(args.checkpoint)
    scenes = cave_split(args.data)["val"]
    rows = {}
    for steps in args.steps:
        result = evaluate(PipelineReconstructor(pipeline, steps=steps), scenes, pipeline.camera, progress=False)
        rows[f"{steps} steps"] = {k: result.mean[k] for k in ("mrae", "rmse", "psnr", "sam", "rgb_error", "seconds")}
    print(f"CAVE val ({len(scenes)} scenes, 256x256), {torch.get_num_threads()} CPU threads, checkpoint {args.checkpoint}")
    print(format_table(rows, first_column="steps", mean_row=False))

    image = np.random.default_rng(0).random((512, 512, 3)).astype(np.float32) * 0.8
    default = PipelineReconstructor(pipeline)
    default(image[:64, :64])  # warm-up
    start = time.perf_counter()
    default(image)
    print(f"one 512x512 image at the default {pipeline.config.default_denoising_steps} steps: "
          f"{time.perf_counter() - start:.2f} s")

    if args.plot is not None:
        from uldm.visualize import plot_curve

        plot_curve(args.plot, args.steps, {"PSNR (dB)": [rows[f"{s} steps"]["psnr"] for s in args.steps]},
                   xlabel="denoising steps", ylabel="PSNR (dB)", title="ULDM on CAVE val: quality vs steps")
        print(f"wrote {args.plot}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
