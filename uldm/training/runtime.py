"""The Accelerator and the learning-rate schedule every stage builds the same way."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .config import RunConfig

logger = logging.getLogger(__name__)


def build_accelerator(config: RunConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    # accelerate keeps process-wide singletons: a second run in one process (a notebook, the tests) with another
    # mixed precision would be refused. Reset them; the process group (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    project = ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs"))
    report_to = config.report_to if config.report_to not in (None, "none") else None
    # Subnormal floats make CPU arithmetic orders of magnitude slower; a VAE run here slowed 30x mid-training.
    torch.set_flush_denormal(True)
    # Without a GPU, cpu=True makes `accelerate launch --multi_gpu --num_processes N` form a gloo process
    # group (MULTI_CPU) instead of N unrelated single processes.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=report_to,
        project_config=project,
    )
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    warn_if_one_cpu_thread(accelerator)
    warn_if_launch_asked_for_more_processes(accelerator)
    return accelerator


def launcher_arguments() -> list[str]:
    """The command line of the process that started this one (`accelerate launch ...`), [] where unknown."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def requested_processes(arguments: list[str]) -> int:
    """--num_processes / --num-processes of an `accelerate launch` command line (1 if absent)."""
    if not any(argument == "launch" or argument.endswith("accelerate.commands.launch") for argument in arguments):
        return 1  # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
    for index, argument in enumerate(arguments):
        for flag in ("--num_processes", "--num-processes"):
            if argument == flag and index + 1 < len(arguments) and arguments[index + 1].isdigit():
                return int(arguments[index + 1])
            if argument.startswith(flag + "="):
                value = argument.split("=", 1)[1]
                return int(value) if value.isdigit() else 1
    return 1


def warn_if_launch_asked_for_more_processes(accelerator, arguments: list[str] | None = None) -> None:
    """`accelerate launch --cpu --num_processes N` starts ONE process (its --cpu launcher ignores N) and says
    nothing; say it, and how to get N processes on a CPU."""
    arguments = launcher_arguments() if arguments is None else arguments
    wanted = requested_processes(arguments)
    if wanted > accelerator.num_processes:
        logger.warning("`accelerate launch` was asked for %d processes but started %d: its --cpu mode runs one "
                       "process whatever --num_processes says. For %d CPU processes use `accelerate launch "
                       "--multi_gpu --num_processes %d ...` (without a GPU they form a gloo process group).",
                       wanted, accelerator.num_processes, wanted, wanted)


def warn_if_one_cpu_thread(accelerator) -> None:
    """`accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise, so a lone process on a CPU-only machine
    uses one core: stage 1's fast recipe took 10 min 19 s that way on 2 cores, 7 min 23 s with both."""
    cores = os.cpu_count() or 1
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1 and torch.get_num_threads() == 1 < cores:
        logger.warning("training on the CPU with 1 thread of %d (OMP_NUM_THREADS=%s): `accelerate launch "
                       "--num_cpu_threads_per_process %d ...` or plain `python ...` uses them all",
                       cores, os.environ.get("OMP_NUM_THREADS"), cores)


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, num_processes: int):
    from diffusers.optimization import get_scheduler

    # accelerate steps a prepared scheduler once per process per optimizer step
    return get_scheduler(
        config.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=config.max_train_steps * num_processes,
    )

