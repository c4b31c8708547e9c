"""Atomic checkpoints and exact resume.

Checkpoints are written by `accelerator.save_state` into a temporary folder renamed into place, so a run killed at
any moment leaves the previous checkpoint intact; only the newest `checkpoints_total_limit` are kept. `resume` loads
one back; `batches_from` positions the batch stream after its step.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..io import fsync_tree
from .config import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_in(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are not listed)."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def save_checkpoint(accelerator, output_dir: Path, step: int, limit: Optional[int]) -> Path:
    """`save_state` into a temporary folder, then rename: a crash mid-save never corrupts a checkpoint."""
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process: RNG states and sharded states are per process
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        fsync_tree(tmp)  # the rename publishes the checkpoint: its files must be on disk first
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if limit is not None:
            for old in checkpoints_in(output_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, output_dir: Path, spec: Optional[str]) -> int:
    """Load a checkpoint ('latest' or a path) and return its step; 0 when there is nothing to resume."""
    if not spec:
        return 0
    if spec == "latest":
        found = checkpoints_in(output_dir)
        if not found:
            accelerator.print(f"no checkpoint in {output_dir}; starting from scratch")
            return 0
        for path in reversed(found):  # a damaged newest checkpoint falls back to the one before it
            try:
                return load_checkpoint(accelerator, path)
            except Exception as exc:  # torch / safetensors / pickle raise many kinds on a damaged file
                logger.warning("cannot resume from %s (%s: %s); trying the checkpoint before it", path,
                               type(exc).__name__, exc)
        raise ConfigError(f"no checkpoint in {output_dir} can be loaded (tried {[p.name for p in found]})")
    path = Path(spec)
    if not path.is_dir() or not CHECKPOINT_PATTERN.match(path.name):
        raise ConfigError(f"{spec}: not a checkpoint folder (expected .../checkpoint-<step>)")
    return load_checkpoint(accelerator, path)


def load_checkpoint(accelerator, path: Path) -> int:
    """Restore model, optimizer, scheduler, EMA and RNG states from `path`; its step."""
    accelerator.load_state(str(path))
    step = int(CHECKPOINT_PATTERN.match(path.name).group(1))
    accelerator.print(f"resumed from {path} at step {step}")
    return step


def batches_from(loader, dataset, sampler, accelerator, start_step: int, accumulation: int) -> Iterator[tuple[int, Any]]:
    """Endless (epoch, batch) stream positioned after `start_step` optimizer steps."""
    batches_per_epoch = len(loader)
    consumed = start_step * accumulation
    epoch, skip = divmod(consumed, batches_per_epoch)
    while True:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        if hasattr(epoch_loader, "set_epoch"):
            # accelerate's loaders count their own epochs and re-seed the sampler from that count on every
            # iteration: set it, or a resumed run would replay epoch 0's order.
            epoch_loader.set_epoch(epoch)
        for batch in without_rng_draws(epoch_loader):
            yield epoch, batch
        epoch, skip = epoch + 1, 0


def without_rng_draws(loader) -> Iterator[Any]:
    """Iterate `loader`, undoing the global-RNG draw its iterator makes on the first fetch (the workers' base seed).

    Batches here are seeded per item, so that draw only shifts the stream a loss uses for noise; undoing it keeps
    the noise a function of the step alone, identical in a resumed run (which starts an extra, skipping iterator).
    """
    iterator = iter(loader)
    state = torch.get_rng_state()
    first = next(iterator, None)
    torch.set_rng_state(state)
    if first is None:
        return
    yield first
    yield from iterator


