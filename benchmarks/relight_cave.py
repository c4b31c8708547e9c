"""Relighting on the CAVE val split: a checkpoint's spectra vs the root-polynomial baseline's vs von Kries.

    python benchmarks/relight_cave.py [--checkpoint checkpoints/uldm-cave] [--illuminants A FL11 LED-B1]
                                      [--figure relight.png] [--json out.json]

Ground truth and every method are rendered under each target illuminant (camera RGB, no white balance);
CIEDE2000 (mean and 95th percentile, pooled over all val pixels) and RGB PSNR are reported per method.
Von Kries needs no spectra: it scales the input RGB by the ratio of the white's RGB under the two lights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from uldm.baseline import RootPolynomialRegression
from uldm.checkpoints import CHECKPOINTS_DIR, load_reconstructor
from uldm.data import cave_split, default_cave_root, read_scene
from uldm.io import save_json
from uldm.relight import relight_figure, relight_metrics, relight_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="the model whose spectra are relit (default: best shipped)")
    parser.add_argument("--baseline", type=Path, default=CHECKPOINTS_DIR / "baseline-rootpoly-nikon5100.npz")
    parser.add_argument("--data", type=Path, default=default_cave_root())
    parser.add_argument("--illuminants", nargs="+", default=["A", "FL11", "LED-B1"])
    parser.add_argument("--figure", type=Path, help="PNG: the first val scene under three illuminants")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    model = load_reconstructor(args.checkpoint)
    baseline = RootPolynomialRegression.load(args.baseline)
    camera = model.camera
    truths, predictions, baselines, inputs = [], [], [], []
    for index, path in enumerate(cave_split(args.data)["val"]):
        cube = read_scene(path, grid=camera.grid).cube
        rgb = camera.render(cube)
        truths.append(cube), predictions.append(model(rgb)), baselines.append(baseline(rgb)), inputs.append(rgb)
        if index == 0 and args.figure is not None:
            relight_figure(args.figure, cube, predictions[-1], rgb, camera, args.illuminants[:3])
            print(f"wrote {args.figure}")
    pooled = relight_metrics(np.concatenate(predictions), np.concatenate(truths), np.concatenate(inputs), camera,
                             args.illuminants, baselines={"root-polynomial": np.concatenate(baselines)})
    print(f"CAVE val, pooled over all pixels; 'reconstruction' = {args.checkpoint or 'default checkpoint'}")
    print(relight_table(pooled))
    if args.json is not None:
        save_json(pooled, args.json)


if __name__ == "__main__":
    main()
