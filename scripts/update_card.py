"""Bring a model card's front matter up to what uldm writes now, keeping its text and the metrics it states.

    python scripts/update_card.py checkpoints/uldm-cave --base-model madebyollin/taesd3 --dataset cave \\
        --eval-dataset "CAVE, standard split, val scenes (balloons, face, jelly_beans, stuffed_toys)"

The model-index (the metrics the hub shows) takes its values from the card's own `uldm.metrics`, all of them or
those named with --metric, so no number is typed in; what is not given keeps what the card said.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from uldm.hub import card_metadata, read_model_card, update_model_card


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder holding README.md, e.g. checkpoints/uldm-cave")
    parser.add_argument("--base-model", action="append", default=[],
                        help="hub id of the pretrained weights the model started from (repeatable)")
    parser.add_argument("--dataset", action="append", default=[], help="dataset it was trained on (repeatable)")
    parser.add_argument("--eval-dataset", help="the dataset the card's metrics were measured on, for the model-index")
    parser.add_argument("--eval-dataset-type", help="its id (default: the first --dataset)")
    parser.add_argument("--split", default="validation", help="the split they were measured on (default: validation)")
    parser.add_argument("--metric", action="append", default=[],
                        help="a metric of the card's table that goes into the model-index (default: all; repeatable)")
    args = parser.parse_args(argv)
    metrics = card_metadata(read_model_card(args.folder)).get("metrics", {})
    unknown = sorted(set(args.metric) - set(metrics))
    if unknown:
        parser.error(f"{args.folder}/README.md states no metric {unknown}; it has {sorted(metrics)}")
    evaluation = None
    if args.eval_dataset:
        dataset_type = args.eval_dataset_type or (args.dataset[0] if args.dataset else None)
        if not dataset_type:
            parser.error("--eval-dataset needs --eval-dataset-type or --dataset")
        evaluation = {"dataset": args.eval_dataset, "dataset_type": dataset_type, "split": args.split,
                      "metrics": {name: metrics[name] for name in (args.metric or metrics)}}
    base_model = args.base_model[0] if len(args.base_model) == 1 else args.base_model
    path = update_model_card(args.folder, base_model=base_model, datasets=args.dataset, evaluation=evaluation)
    print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
