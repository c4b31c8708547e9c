"""What every trainer in `stages/` shares, one concept a module:

- `config`: YAML configs with `--set key=value` overrides (`RunConfig` for any run, `TrainConfig` for runs on
  spectral scenes, `PipelineConfig` for those that end in a pipeline, with the hub keys); unknown or missing keys name the file;
- `data`: seeded patches of spectral scenes, batches a pure function of (seed, epoch, position);
- `denoising`: the Stable Diffusion objective (stage 2 and RGB pre-training);
- `runtime`: the Accelerator and the learning-rate schedule;
- `checkpointing`: atomic `save_state` checkpoints and exact resume;
- `weights`: atomic model saves, gathering sharded weights, the exponential moving average;
- `validation`: scoring a pipeline on whole scenes as `uldm evaluate` does;
- `loop`: the optimisation loop and the command line of every stage.

So checkpointing, resume and logging behave the same in every stage; a stage supplies its model and its loss.
"""

from .checkpointing import (
    CHECKPOINT_PATTERN,
    batches_from,
    checkpoints_in,
    resume,
    save_checkpoint,
    without_rng_draws,
)
from .config import (
    ConfigError,
    PipelineConfig,
    RunConfig,
    TrainConfig,
    base_argument_parser,
    config_dict,
    config_from_args,
    load_config,
    typed_value,
)
from .data import (
    EpochSampler,
    build_augmentation,
    build_train_loader,
    make_loader,
    sample_pixels,
    scene_paths,
)
from .denoising import denoising_loss, diffusion_target
from .loop import read_budget, read_metrics, stage_main, train_loop
from .runtime import build_accelerator, build_scheduler, warn_if_one_cpu_thread
from .validation import log_images, validate_pipeline
from .weights import (
    ModelEMA,
    averaged_weights,
    build_ema,
    final_model,
    full_model,
    publish_pipeline,
    save_pretrained_atomic,
)

__all__ = [
    "averaged_weights", "base_argument_parser", "batches_from", "build_accelerator", "build_augmentation",
    "build_ema", "build_scheduler", "build_train_loader", "CHECKPOINT_PATTERN", "checkpoints_in", "config_dict",
    "config_from_args", "ConfigError", "denoising_loss", "diffusion_target", "EpochSampler", "final_model",
    "full_model", "load_config", "log_images", "make_loader", "publish_pipeline", "ModelEMA", "read_budget", "read_metrics", "resume", "RunConfig",
    "sample_pixels", "save_checkpoint", "save_pretrained_atomic", "scene_paths", "stage_main", "train_loop", "TrainConfig", "PipelineConfig",
    "typed_value", "validate_pipeline", "warn_if_one_cpu_thread", "without_rng_draws",
]
