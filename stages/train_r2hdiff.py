"""Train R2H-Diff, the second model family: RGB-guided diffusion directly on the hyperspectral cube.

    accelerate launch stages/train_r2hdiff.py --config stages/configs/r2hdiff_cave.yaml
    python stages/train_r2hdiff.py --config ... --resume_from_checkpoint latest     # continue a stopped run

One training step (the paper's recipe as `uldm.models.r2hdiff` reads it): a patch of spectra s is mapped to the
network's data space x0 = 2s − 1 (`to_model_space`), noised at a uniform random timestep with the task-adapted
linear schedule (x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε), and the network, conditioned on the patch's RGB,
predicts the clean cube. The loss is the paper's L1 + λ·gradient-consistency, taken on the prediction mapped
back to spectra (so its numbers read like the L1 of stage 1). No pretrained weights and no stage 1: the run
stands alone. The result is saved as a complete `R2HDiffPipeline` (network, DDIM scheduler, camera) in
<output_dir>/pipeline with a model card, and pushed to a hub with `push_to_hub: true`.

Everything else (configs, checkpoints every `checkpointing_steps`, exact resume, logging, validation with the
project's metrics) is the shared skeleton of `uldm.training`, as in stages 1 and 2.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from diffusers import DDIMScheduler

from uldm.camera import CameraResponse
from uldm.models.r2hdiff import (
    R2HDIFF_BETA_END,
    R2HDIFF_BETA_START,
    R2HDIFF_INFERENCE_STEPS,
    R2HDiffNet,
    make_r2hdiff_scheduler,
    r2hdiff_loss,
)
from uldm.pipelines.pipeline_r2hdiff import R2HDiffPipeline, from_model_space, to_model_space
from uldm.training import (
    averaged_weights,
    build_ema,
    stage_main,
    ConfigError,
    PipelineConfig,
    build_accelerator,
    build_augmentation,
    build_scheduler,
    build_train_loader,
    config_dict,
    final_model,
    full_model,
    resume,
    sample_pixels,
    publish_pipeline,
    scene_paths,
    train_loop,
    validate_pipeline,
)


@dataclass
class R2HDiffConfig(PipelineConfig):
    # network (`R2HDiffNet`; the defaults are the paper-sized one: 0.57 M parameters, 12 G MACs at 256 x 256)
    block_channels: list = field(default_factory=lambda: [32, 48, 64])
    rgb_feature_channels: list = field(default_factory=lambda: [16, 24, 32])
    layers_per_level: list = field(default_factory=lambda: [3, 3, 3])
    attention_heads: list = field(default_factory=lambda: [1, 2, 2])
    ffn_expansion: float = 2.0
    time_embed_dim: int = 64
    adaptive_temperature: bool = True
    spectral_gate: bool = True
    # the U-Net corrects a root-polynomial regression of the RGB, fitted on this many training pixels at the start
    regression_skip: bool = False
    regression_init_pixels: int = 200_000
    freeze_regression: bool = False  # keep the skip at its least-squares fit; only the U-Net's correction trains
    # diffusion: the task-adapted linear schedule, rescaled to zero terminal SNR (see make_r2hdiff_scheduler)
    num_train_timesteps: int = 1000
    beta_start: float = R2HDIFF_BETA_START
    beta_end: float = R2HDIFF_BETA_END
    zero_terminal_snr: bool = True
    # loss: L1 on the predicted clean cube + gradient_weight x gradient consistency (the paper's best: 1.0)
    gradient_weight: float = 1.0
    mse_weight: float = 0.0  # ours: + this x squared error (what PSNR scores); the paper has none
    learning_rate: float = 5e-4
    # validation and the saved pipeline's defaults
    validation_inference_steps: int = R2HDIFF_INFERENCE_STEPS
    default_denoising_steps: int = R2HDIFF_INFERENCE_STEPS
    default_processing_resolution: int = 0
    default_ensemble_size: int = 1
    project_rgb: bool = False

    def validate(self) -> None:
        super().validate()
        for name in ("gradient_weight", "mse_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("validation_inference_steps", "default_denoising_steps", "default_ensemble_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.freeze_regression and not self.regression_skip:
            raise ConfigError("freeze_regression needs regression_skip: true (there is no regression to freeze)")
        with torch.device("meta"):  # mismatched level lists fail here, before any data is read (no RNG drawn)
            build_network(self, self.camera_response())


def build_network(config: R2HDiffConfig, camera: CameraResponse) -> R2HDiffNet:
    """The denoiser for `camera`'s bands, predicting the clean cube (what the loss and the scheduler expect)."""
    try:
        return R2HDiffNet(
            spectral_channels=camera.num_bands, block_channels=tuple(config.block_channels),
            rgb_feature_channels=tuple(config.rgb_feature_channels), layers_per_level=tuple(config.layers_per_level),
            attention_heads=tuple(config.attention_heads), ffn_expansion=config.ffn_expansion,
            time_embed_dim=config.time_embed_dim, adaptive_temperature=config.adaptive_temperature,
            spectral_gate=config.spectral_gate, prediction_type="sample", regression_skip=config.regression_skip,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"network: {exc}") from exc


def build_noise_scheduler(config: R2HDiffConfig) -> DDIMScheduler:
    """The schedule of training and sampling (one config; the pipeline gets its own copy)."""
    return make_r2hdiff_scheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                                  beta_end=config.beta_end, prediction_type="sample",
                                  zero_terminal_snr=config.zero_terminal_snr, num_inference_steps=None)


def build_pipeline(net: R2HDiffNet, noise_scheduler: DDIMScheduler, camera: CameraResponse,
                   config: R2HDiffConfig) -> R2HDiffPipeline:
    """The inference pipeline around the current network, with the config's defaults."""
    return R2HDiffPipeline.for_camera(
        net, DDIMScheduler.from_config(noise_scheduler.config), camera,
        default_denoising_steps=config.default_denoising_steps,
        default_processing_resolution=config.default_processing_resolution,
        default_ensemble_size=config.default_ensemble_size, project_rgb=config.project_rgb,
    )


def train(config: R2HDiffConfig, resume_from: Optional[str] = None) -> R2HDiffPipeline:
    """Train in this process (one of several under `accelerate launch`); returns the final pipeline."""
    from accelerate.utils import set_seed

    output_dir = Path(config.output_dir)
    accelerator = build_accelerator(config)
    set_seed(config.seed)

    # 1. data: seeded random patches of spectra with their RGB rendered by the camera; whole val scenes
    camera = config.camera_response()
    dataset, sampler, loader = build_train_loader(config, camera)
    val_scenes = scene_paths(config, config.val_scenes)

    # 2. network, schedule, optimiser, LR schedule; accelerate wraps what trains
    net = build_network(config, camera)
    if config.regression_skip:  # start from the least-squares regression (a resumed run then loads its own)
        rgb, hsi = sample_pixels(dataset, config.regression_init_pixels)
        net.init_regression(rgb, to_model_space(hsi))
        net.regression.requires_grad_(not config.freeze_regression)
    noise_scheduler = build_noise_scheduler(config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    lr_scheduler = build_scheduler(config, optimizer, accelerator.num_processes)
    net, optimizer, loader, lr_scheduler = accelerator.prepare(net, optimizer, loader, lr_scheduler)
    ema = build_ema(accelerator, config, net, "net")  # None unless use_ema
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=config_dict(config))

    # 3. resume: same step, optimizer, scheduler and RNG state; the batch stream is positioned after it
    step = resume(accelerator, output_dir, resume_from)

    # 4. train: noise the scaled cube, predict it clean from (noisy cube, RGB, t)
    augment = build_augmentation(config, camera, accelerator.device)  # None without mix / tilt / gain

    def loss_fn(batch) -> tuple[torch.Tensor, dict[str, float]]:
        hsi, rgb = batch["hsi"], batch["rgb"]
        if augment is not None:
            hsi, rgb = augment(hsi, rgb)
        clean = to_model_space(hsi)
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, config.num_train_timesteps, (len(clean),), device=clean.device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        prediction = from_model_space(net(noisy, rgb, timesteps).float())
        loss = r2hdiff_loss(prediction, hsi, config.gradient_weight, config.mse_weight)
        return loss, {"train/l1": (prediction.detach() - hsi).abs().mean().item()}

    def validate_fn(current: int) -> dict[str, float]:
        unwrapped = full_model(accelerator, net)  # every process: a collective under FSDP
        if not accelerator.is_main_process:
            return {}
        with averaged_weights(ema, unwrapped):
            unwrapped.eval()
            metrics = validate_pipeline(build_pipeline(unwrapped, noise_scheduler, camera, config), val_scenes,
                                        data_format=config.data_format,
                                        num_inference_steps=config.validation_inference_steps,
                                        trackers=accelerator.trackers, step=current)
            unwrapped.train()
        return metrics

    started = time.perf_counter()
    step = train_loop(
        accelerator, config, models=[net], optimizer=optimizer, lr_scheduler=lr_scheduler, loader=loader,
        dataset=dataset, sampler=sampler, start_step=step, loss_fn=loss_fn, validate_fn=validate_fn, ema=ema,
        desc="r2hdiff",
    )
    seconds = time.perf_counter() - started

    # 5. the complete pipeline, saved atomically, with a model card; optional push
    accelerator.wait_for_everyone()
    net = final_model(accelerator, net, ema)
    pipeline = build_pipeline(net.eval(), noise_scheduler, camera, config)
    publish_pipeline(accelerator, config, pipeline, lambda folder: write_card(folder, config, step, pipeline))
    accelerator.print(f"{step} steps ({seconds:.0f} s this run)")
    accelerator.end_training()
    return pipeline


def write_card(folder: Path, config: R2HDiffConfig, step: int, pipeline: R2HDiffPipeline) -> None:
    """A model card saying what the pipeline is and what it was trained on, with the validation metrics it measured."""
    from uldm.training.card import write_run_card

    write_run_card(folder, config, title=f"R2H-Diff spectral reconstruction ({Path(config.output_dir).name})",
                   description=(f"R2H-Diff ({pipeline.model_card_training()}) trained from scratch for {step} steps on "
                                f"{config.data_format} data ({config.train_scenes}); "
                                f"{config.default_denoising_steps} DDIM steps by default."),
                   camera=pipeline.camera.name, pipeline_class="R2HDiffPipeline", tags=("r2h-diff",))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return stage_main("Train R2H-Diff (RGB-guided diffusion on the hyperspectral cube)", R2HDiffConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
