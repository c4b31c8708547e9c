"""Averages of different models' answers on the CAVE val split: do the models' errors cancel?

    python benchmarks/model_ensemble.py MODEL MODEL [MODEL ...] [--json OUT]

A MODEL is what `uldm evaluate --checkpoint` takes: a pipeline folder, a hub id or a baseline .npz (`uldm baseline
fit --degree N -o FILE` writes regressions of other degrees). Every model alone, every pair and all of them together
are scored by `uldm.evaluation.evaluate` (clean linear RGB rendered with the first model's camera; all models must
share it). Each member's answer is the same whichever ensemble asks for it (seeded pipelines, memoised here), so
only the averaging differs between rows. An average of answers that re-render to the input RGB re-renders to it too
(Φ is linear). No seconds column: memoised members cost nothing after their first call.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from uldm.checkpoints import load_reconstructor
from uldm.data import cave_split, default_cave_root
from uldm.evaluation import evaluate
from uldm.io import save_json
from uldm.metrics import format_table

Reconstruct = Callable[[np.ndarray], np.ndarray]


def memoised(reconstruct: Reconstruct) -> Reconstruct:
    """`reconstruct`, computed once per distinct input image."""
    answers: dict[str, np.ndarray] = {}

    def call(rgb: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()
        if key not in answers:
            answers[key] = np.asarray(reconstruct(rgb), dtype=np.float32)
        return answers[key]

    return call


def average_of(members: Sequence[Reconstruct]) -> Reconstruct:
    """The mean of the members' answers (equal weights: nothing is fitted to the scenes it is scored on)."""
    return lambda rgb: np.mean([member(rgb) for member in members], axis=0)


def ensembles(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Each model alone, each pair, and all of them (when there are more than two)."""
    groups = [(name,) for name in names] + list(itertools.combinations(names, 2))
    return groups + [tuple(names)] if len(names) > 2 else groups


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="pipeline folders, hub ids or baseline .npz files")
    parser.add_argument("--data", type=Path, default=default_cave_root())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("no CAVE data found: pass --data DIR (or set ULDM_CAVE_ROOT)")
    if len(set(args.models)) < 2:
        parser.error("give at least two different models")

    loaded = {name: load_reconstructor(name) for name in dict.fromkeys(args.models)}
    cameras = {model.camera.name for model in loaded.values()}
    if len(cameras) > 1:
        parser.error(f"the models were made for different cameras ({', '.join(sorted(cameras))}): averages would mix them")
    members = {name: memoised(model) for name, model in loaded.items()}
    camera = next(iter(loaded.values())).camera
    scenes = cave_split(args.data)["val"]

    rows = {}
    for group in ensembles(list(members)):
        result = evaluate(average_of([members[name] for name in group]), scenes, camera, progress=False)
        rows[" + ".join(group)] = result.row(per_scene="psnr")
    print(f"averages of models' answers on CAVE val ({len(scenes)} scenes, {camera.name})")
    print(format_table(rows, first_column="ensemble", mean_row=False))
    if args.json is not None:
        save_json(rows, args.json)


if __name__ == "__main__":
    main()
