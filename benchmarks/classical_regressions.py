"""Classical per-pixel regressions RGB -> spectra on the CAVE val split: the peers of METHOD.md section 6, measured.

    python benchmarks/classical_regressions.py [--degrees 1 2 3 4] [--fit-on train|val|train+val] [--json out.json]

`uldm.baseline.RootPolynomialRegression` of degree 1 (linear) to 4 (Finlayson et al. 2015's root-polynomial
terms, each degree with a constant term), fitted by least squares on every pixel of the CAVE train split and
scored on val by `uldm.evaluation.evaluate` (the code behind `uldm evaluate`: RGB rendered from the ground truth
with the camera, clean and linear). Degree 2 is the repository's baseline (checkpoints/baseline-rootpoly-nikon5100.npz;
`uldm baseline fit --degree N` writes the others).

`--fit-on val` (or `train+val`) fits on the scored scenes themselves: not a model anyone can ship, but a ceiling
for what any per-pixel function of RGB of that form reaches on those scenes, which tells how much of the remaining
error only spatial context can remove.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from uldm import CameraResponse
from uldm.baseline import DEGREES, RootPolynomialRegression, scene_pixels
from uldm.data import cave_split, default_cave_root
from uldm.evaluation import evaluate
from uldm.io import save_json
from uldm.metrics import format_table


FIT_SPLITS = ("train", "val", "train+val")


def compare_degrees(data: Path, camera: CameraResponse, degrees: Sequence[int],
                    fit_on: str = "train") -> dict[str, dict[str, float]]:
    """Fit each degree on the pixels of `fit_on` ("train", "val" or "train+val") and score it on val."""
    split = cave_split(data)
    rgb, spectra = scene_pixels([scene for name in fit_on.split("+") for scene in split[name]], camera)
    rows = {}
    for degree in degrees:
        model = RootPolynomialRegression.fit(rgb, spectra, camera, degree)
        result = evaluate(model, split["val"], camera, progress=False)
        rows[f"degree {degree}"] = result.row(per_scene="psnr")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_cave_root())
    parser.add_argument("--degrees", type=int, nargs="+", default=list(DEGREES), choices=DEGREES)
    parser.add_argument("--fit-on", choices=FIT_SPLITS, default="train",
                        help="scenes to fit on (val: an in-sample ceiling, not a model; default: train)")
    parser.add_argument("--camera", default="nikon5100")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("no CAVE data found: pass --data DIR (or set ULDM_CAVE_ROOT)")

    rows = compare_degrees(args.data, CameraResponse.load(args.camera), args.degrees, args.fit_on)
    print(f"root-polynomial regressions, fitted on CAVE {args.fit_on}, scored on val ({args.data})")
    print(format_table(rows, first_column="regression", mean_row=False))
    if args.json is not None:
        save_json(rows, args.json)


if __name__ == "__main__":
    main()
