"""Classical per-pixel regressions RGB -> spectra on the CAVE val split: the peers of METHOD.md section 6, measured.

    python benchmarks/classical_regressions.py [--degrees 1 2 3 4] [--camera nikon5100] [--json out.json]

`uldm.baseline.RootPolynomialRegression` of degree 1 (linear) to 4 (Finlayson et al. 2015's root-polynomial
terms, each degree with a constant term), fitted by least squares on every pixel of the CAVE train split and
scored on val by `uldm.evaluation.evaluate` (the code behind `uldm evaluate`: RGB rendered from the ground truth
with the camera, clean and linear). Degree 2 is the repository's baseline (checkpoints/baseline-rootpoly-nikon5100.npz;
`uldm baseline fit --degree N` writes the others).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from uldm import CameraResponse
from uldm.baseline import DEGREES, RootPolynomialRegression, scene_pixels
from uldm.data import cave_split, default_cave_root
from uldm.evaluation import evaluate
from uldm.metrics import format_table


def compare_degrees(data: Path, camera: CameraResponse, degrees: Sequence[int]) -> dict[str, dict[str, float]]:
    split = cave_split(data)
    rgb, spectra = scene_pixels(split["train"], camera)
    rows = {}
    for degree in degrees:
        model = RootPolynomialRegression.fit(rgb, spectra, camera, degree)
        result = evaluate(model, split["val"], camera, progress=False)
        rows[f"degree {degree}"] = {k: result.mean[k] for k in ("mrae", "rmse", "psnr", "sam", "rgb_error")}
        rows[f"degree {degree}"].update({f"psnr {name}": row["psnr"] for name, row in result.per_scene.items()})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_cave_root())
    parser.add_argument("--degrees", type=int, nargs="+", default=list(DEGREES), choices=DEGREES)
    parser.add_argument("--camera", default="nikon5100")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("no CAVE data found: pass --data DIR (or set ULDM_CAVE_ROOT)")

    rows = compare_degrees(args.data, CameraResponse.load(args.camera), args.degrees)
    print(f"root-polynomial regressions, fitted on CAVE train, scored on val ({args.data})")
    print(format_table(rows, first_column="regression", mean_row=False))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
