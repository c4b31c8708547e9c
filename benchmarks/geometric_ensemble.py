"""Self-ensemble over flips and rotations: does averaging a model's answers for the 8 dihedral transforms of its
input help on the CAVE val split?

    python benchmarks/geometric_ensemble.py --checkpoint checkpoints/uldm-cave [--members 1 2 4 8] [--json OUT]

Member k reconstructs the RGB image rotated by k·90° (k mod 4) and, for k >= 4, mirrored; its answer is turned back
and the members' answers averaged. Each answer re-renders to the input RGB, so the average does too (Φ is linear).
The noise seed is the same for every member, so what is averaged is the network's errors, not the sampler's (an
ensemble over noise is the pipeline's own `ensemble_size`). Scored by `uldm.evaluation.evaluate` (clean linear RGB
rendered with the checkpoint's camera); seconds are per 256 x 256 image, all members included.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from uldm.checkpoints import load_reconstructor
from uldm.data import cave_split, default_cave_root
from uldm.evaluation import ROW_KEYS, evaluate
from uldm.io import save_json
from uldm.metrics import format_table


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """Transform k of 8 of an H x W x C image: k mod 4 quarter turns, then a left-right mirror for k >= 4."""
    turned = np.rot90(image, k % 4, axes=(0, 1))
    return turned[:, ::-1] if k >= 4 else turned


def undo_dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """The inverse of `dihedral(., k)`."""
    unmirrored = image[:, ::-1] if k >= 4 else image
    return np.rot90(unmirrored, -(k % 4), axes=(0, 1))


class GeometricEnsemble:
    """The mean of `reconstruct` over the first `members` dihedral transforms of the input."""

    def __init__(self, reconstruct: Callable[[np.ndarray], np.ndarray], members: int) -> None:
        if not 1 <= members <= 8:
            raise ValueError(f"members must be 1 to 8 (the dihedral transforms of a square), got {members}")
        self.reconstruct, self.members = reconstruct, members

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        answers = [undo_dihedral(self.reconstruct(np.ascontiguousarray(dihedral(rgb, k))), k) for k in range(self.members)]
        return np.mean(answers, axis=0)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="pipeline folder, hub id or baseline .npz (default: the shipped one)")
    parser.add_argument("--data", type=Path, default=default_cave_root())
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("no CAVE data found: pass --data DIR (or set ULDM_CAVE_ROOT)")

    model = load_reconstructor(args.checkpoint)
    scenes = cave_split(args.data)["val"]
    rows = {}
    for members in args.members:
        result = evaluate(GeometricEnsemble(model, members), scenes, model.camera, progress=False)
        rows[f"{members} members"] = result.row((*ROW_KEYS, "seconds"))
    print(f"geometric self-ensemble of {args.checkpoint or 'the shipped checkpoint'} on CAVE val ({len(scenes)} scenes)")
    print(format_table(rows, first_column="ensemble", mean_row=False))
    if args.json is not None:
        save_json(rows, args.json)


if __name__ == "__main__":
    main()
