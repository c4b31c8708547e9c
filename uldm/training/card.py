"""The model card a training run writes beside its pipeline: what it started from and trained on, the validation
metrics the run itself measured last, and its config, as YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import yaml

from .config import TrainConfig, config_dict
from .loop import read_budget, read_metrics

METRIC_NAMES = {"val/psnr": "PSNR", "val/sam": "SAM", "val/mrae": "MRAE", "val/rmse": "RMSE"}


def last_validation(output_dir: Path) -> dict:
    """The last logged row holding validation metrics ({} if the run never validated)."""
    rows = [row for row in read_metrics(output_dir) if any(key in row for key in METRIC_NAMES)]
    return rows[-1] if rows else {}


def budget_sentence(output_dir: Path) -> str:
    """'Budget: N steps, M samples, S min of training on DEVICE (k calls).' ('' if the run recorded none)."""
    budget = read_budget(output_dir)
    if not budget:
        return ""
    return (f"Budget: {budget['steps']} steps, {budget['samples']:,} samples, {budget['seconds'] / 60:.1f} min of "
            f"training on {budget['device']} ({budget['calls']} call(s) of the trainer).\n\n")


def write_run_card(folder: Path, config: TrainConfig, *, title: str, description: str, camera: str,
                   pipeline_class: str, started_from: Optional[str] = None, tags: Sequence[str] = ()) -> Path:
    """`folder`/README.md for the pipeline a run saved (see `uldm.hub.write_model_card`)."""
    from ..hub import looks_like_local_path, write_model_card

    last = last_validation(Path(config.output_dir))
    metrics = {name: last[key] for key, name in METRIC_NAMES.items() if key in last}
    scenes = config.val_scenes if isinstance(config.val_scenes, str) else ", ".join(map(str, config.val_scenes))
    evaluation = ({"dataset": f"{config.data_format} validation scenes: {scenes}", "dataset_type": config.data_format,
                   "split": "validation", "metrics": metrics} if metrics else None)
    measured = f"Validation metrics measured by the run after step {last['step']}.\n\n" if metrics else ""
    shown = {key: value for key, value in config_dict(config).items() if key != "data_root"}  # a local path
    training = (f"{measured}{budget_sentence(Path(config.output_dir))}The run's config (without its local data folder):"
                f"\n\n```yaml\n{yaml.safe_dump(shown, sort_keys=False)}```")
    # the config's base_model, else the starting point when it is a hub id (a local folder names nothing on the hub)
    hub_base = getattr(config, "base_model", None) or (
        started_from if started_from and not looks_like_local_path(started_from) else None)
    return write_model_card(folder, title=title, description=description, metrics=metrics or None, camera=camera,
                            training=training, tags=tags, pipeline_class=pipeline_class, base_model=hub_base,
                            datasets=[config.data_format], evaluation=evaluation)
