"""The optimisation loop and the command line every stage shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Type

import torch
from tqdm.auto import tqdm

from .checkpointing import batches_from, save_checkpoint
from .config import ConfigError, ConfigT, RunConfig, base_argument_parser, config_from_args
from .weights import ModelEMA


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
    process's metrics ({} elsewhere).
    """
    output_dir = Path(config.output_dir)
    step = start_step
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
        if validate_fn is not None and (step % config.validation_steps == 0 or step == config.max_train_steps):
            metrics = validate_fn(step)  # on every process: gathering sharded weights is collective
            if accelerator.is_main_process:
                logs.update(metrics)
                tqdm.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            accelerator.wait_for_everyone()
        accelerator.log(logs, step=step)
    progress.close()
    return step


def stage_main(description: str, config_class: Type[ConfigT], train: Callable[[ConfigT, Optional[str]], Any],
               argv: Optional[Sequence[str]] = None) -> int:
    """The command line every stage script shares: --config/--set/--output_dir/--resume_from_checkpoint, then
    `train(config, resume_from)`; a config problem is printed (naming the file) with exit code 2."""
    import sys

    args = base_argument_parser(description).parse_args(argv)
    try:
        train(config_from_args(config_class, args), args.resume_from_checkpoint)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
