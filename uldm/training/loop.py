"""The optimisation loop and the command line every stage shares."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Type

import torch
from tqdm.auto import tqdm

from .checkpointing import batches_from, save_checkpoint
from .config import (
    ConfigError,
    ConfigT,
    RunConfig,
    base_argument_parser,
    config_from_args,
)
from .weights import ModelEMA


def metrics_file(output_dir: Path) -> Path:
    return Path(output_dir) / "logs" / "metrics.jsonl"


def append_metrics(output_dir: Path, step: int, logs: dict[str, float]) -> None:
    path = metrics_file(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps({"step": step, **logs}) + "\n")


def read_metrics(output_dir: Path) -> list[dict[str, float]]:
    """The logged steps in order, one dict each; where a resumed run logged a step again, its line wins (a line cut
    short by a crash is skipped)."""
    by_step: dict[int, dict[str, float]] = {}
    path = metrics_file(output_dir)
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            by_step[int(row["step"])] = row
    return [by_step[step] for step in sorted(by_step)]


def utc_timestamp() -> str:
    """Now as ISO 8601 with microseconds and the UTC offset, which `datetime.fromisoformat` reads back."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def record_budget(output_dir: Path, accelerator, config: RunConfig, first: int, last: int, seconds: float,
                  *, started: str, ended: bool = True) -> Path:
    """Record what this call of the loop spent in <output_dir>/logs/run_summary.json, one entry per call (a resumed
    run adds one), so ablations can state equal budgets: steps, samples seen, wall-clock and the device. The entry
    is rewritten at every checkpoint with `ended` null, so a call that is killed keeps its spend up to its last
    checkpoint (the steps a resumed run repeats after it are counted again, as they were spent again)."""
    from ..io import save_json

    path = output_dir / "logs" / "run_summary.json"
    entries = [e for e in (json.loads(path.read_text()) if path.exists() else []) if e.get("started") != started]
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    per_step = config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    entries.append({"from_step": first, "to_step": last, "samples": (last - first) * per_step,
                    "seconds": round(seconds, 1), "device": name, "processes": accelerator.num_processes,
                    "mixed_precision": accelerator.mixed_precision, "started": started,
                    "ended": utc_timestamp() if ended else None})
    return save_json(entries, path)


def read_budget(output_dir: Path) -> dict[str, Any]:
    """A run's training budget from <output_dir>/logs/run_summary.json, every call of the trainer summed: steps,
    samples, seconds, device (the last call's), calls, and `unrecorded_steps` (steps of calls killed before they
    recorded anything; older runs recorded a call only at its end). {} when the run recorded none."""
    path = Path(output_dir) / "logs" / "run_summary.json"
    if not path.exists():
        return {}
    calls = json.loads(path.read_text())
    recorded = sum(call["to_step"] - call["from_step"] for call in calls)
    return {"steps": calls[-1]["to_step"], "samples": sum(call["samples"] for call in calls),
            "seconds": round(sum(call["seconds"] for call in calls), 1), "device": calls[-1]["device"],
            "calls": len(calls), "unrecorded_steps": max(0, calls[-1]["to_step"] - recorded)}


def train_loop(
    accelerator,
    config: RunConfig,
    *,
    models: Sequence[torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    loader,
    dataset,
    sampler,
    start_step: int,
    loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    validate_fn: Optional[Callable[[int], dict[str, float]]] = None,
    ema: Optional[ModelEMA] = None,
    desc: str = "train",
) -> int:
    """The optimisation loop every stage shares; returns the last step.

    `loss_fn(batch) -> (loss, logs)` is the stage's only business. Around it: gradient accumulation and
    clipping, the `ema` update after each optimizer step, atomic checkpoints every
    `checkpointing_steps`, `validate_fn(step)` every `validation_steps`, tracker logging and a progress bar.
    `validate_fn` runs on every process (so it can call the collective `full_model`) and returns the main
    process's metrics ({} elsewhere). Every step's logs also go, one JSON line each, to <output_dir>/logs/
    metrics.jsonl (`read_metrics` reads them back, a resumed run's lines winning), for loss curves without a tracker,
    and each call's budget (steps, samples, seconds, device) to <output_dir>/logs/run_summary.json.
    """
    output_dir = Path(config.output_dir)
    step = start_step
    started = time.perf_counter()
    call_started = utc_timestamp()  # also names this call's budget entry (microseconds tell calls apart)
    params = [p for model in models for p in model.parameters() if p.requires_grad]
    progress = tqdm(total=config.max_train_steps, initial=step, desc=desc, disable=not accelerator.is_local_main_process)
    for _, batch in batches_from(loader, dataset, sampler, accelerator, step, config.gradient_accumulation_steps):
        if step >= config.max_train_steps:
            break
        with accelerator.accumulate(*models):
            loss, logs = loss_fn(batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        step += 1
        if ema is not None:
            ema.step()
        progress.update(1)
        logs = {"train/loss": loss.detach().item(), **logs, "lr": lr_scheduler.get_last_lr()[0]}
        progress.set_postfix(loss=f"{logs['train/loss']:.4f}")
        if step % config.checkpointing_steps == 0 or step == config.max_train_steps:
            save_checkpoint(accelerator, output_dir, step, config.checkpoints_total_limit)
            if accelerator.is_main_process:
                record_budget(output_dir, accelerator, config, start_step, step, time.perf_counter() - started,
                              started=call_started, ended=False)
        if validate_fn is not None and (step % config.validation_steps == 0 or step == config.max_train_steps):
            metrics = validate_fn(step)  # on every process: gathering sharded weights is collective
            if accelerator.is_main_process:
                logs.update(metrics)
                tqdm.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            accelerator.wait_for_everyone()
        accelerator.log(logs, step=step)
        if accelerator.is_main_process:
            append_metrics(output_dir, step, logs)
    progress.close()
    if accelerator.is_main_process:
        record_budget(output_dir, accelerator, config, start_step, step, time.perf_counter() - started,
                      started=call_started)
    return step


def stage_main(description: str, config_class: Type[ConfigT], train: Callable[[ConfigT, Optional[str]], Any],
               argv: Optional[Sequence[str]] = None) -> int:
    """The command line every stage script shares: --config/--set/--output_dir/--resume_from_checkpoint, then
    `train(config, resume_from)`; a config problem is printed (naming the file) with exit code 2."""
    import sys

    args = base_argument_parser(description, config_class).parse_args(argv)
    try:
        train(config_from_args(config_class, args), args.resume_from_checkpoint)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
