"""Train MST++, the regression peer: RGB patch -> spectral patch, one forward, no diffusion.

    python stages/train_mstpp.py --config stages/configs/mstpp_cave.yaml
    accelerate launch stages/train_mstpp.py --config ... --resume_from_checkpoint latest

The paper's recipe read for this project's data: seeded random patches of the training scenes with their RGB
rendered by the camera, the MRAE loss (mean |ŝ − s| / (s + ε); CAVE has zero-valued pixels, hence ε), Adam with a
cosine schedule; optionally the same batch augmentation and weight averaging as the other stages. Everything else
(configs, checkpoints, exact resume, logging, validation with the project's metrics) is the shared skeleton of
`uldm.training`. The result is a complete `MSTPlusPlusPipeline` in <output_dir>/pipeline with a model card.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from uldm.models.mstpp import MSTPlusPlus
from uldm.pipelines.pipeline_mstpp import MSTPlusPlusPipeline
from uldm.training import (
    ConfigError,
    PipelineConfig,
    averaged_weights,
    build_accelerator,
    build_augmentation,
    build_ema,
    build_scheduler,
    build_train_loader,
    config_dict,
    final_model,
    full_model,
    publish_pipeline,
    resume,
    scene_paths,
    stage_main,
    train_loop,
    validate_pipeline,
)

LOSSES = ("mrae", "l1")


@dataclass
class MSTPPConfig(PipelineConfig):
    # network (`MSTPlusPlus`; the defaults are the paper's: 1.62 M parameters)
    channels: int = 31
    stages: int = 3
    levels: int = 2
    blocks: list = field(default_factory=lambda: [1, 1, 1])
    # loss: the paper's MRAE (with `mrae_epsilon` for zero-valued pixels) or L1
    loss: str = "mrae"
    mrae_epsilon: float = 1e-3
    learning_rate: float = 4e-4
    # the saved pipeline's defaults
    default_processing_resolution: int = 0
    project_rgb: bool = False

    def validate(self) -> None:
        super().validate()
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.mrae_epsilon <= 0:
            raise ConfigError(f"mrae_epsilon must be > 0, got {self.mrae_epsilon}")
        if self.patch_size % 2 ** (self.levels + 1):
            raise ConfigError(f"patch_size must be a multiple of {2 ** (self.levels + 1)}, got {self.patch_size}")
        with torch.device("meta"):  # mismatched sizes fail here, before any data is read
            build_network(self, self.camera_response().num_bands)


def build_network(config: MSTPPConfig, bands: int) -> MSTPlusPlus:
    try:
        return MSTPlusPlus(out_channels=bands, channels=config.channels, stages=config.stages, levels=config.levels,
                           blocks=tuple(config.blocks))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"network: {exc}") from exc


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str, epsilon: float) -> torch.Tensor:
    """MRAE (the paper's) or L1 between predicted and true spectra."""
    error = (prediction - target).abs()
    return (error / (target + epsilon)).mean() if kind == "mrae" else error.mean()


def train(config: MSTPPConfig, resume_from: Optional[str] = None) -> MSTPlusPlusPipeline:
    """Train in this process (one of several under `accelerate launch`); returns the final pipeline."""
    from accelerate.utils import set_seed

    output_dir = Path(config.output_dir)
    accelerator = build_accelerator(config)
    set_seed(config.seed)

    # 1. data: seeded random patches with their RGB rendered by the camera; whole val scenes
    camera = config.camera_response()
    dataset, sampler, loader = build_train_loader(config, camera)
    val_scenes = scene_paths(config, config.val_scenes)

    # 2. network, optimiser, schedule; accelerate wraps what trains
    net = build_network(config, camera.num_bands)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=config.adam_weight_decay)
    lr_scheduler = build_scheduler(config, optimizer, accelerator.num_processes)
    net, optimizer, loader, lr_scheduler = accelerator.prepare(net, optimizer, loader, lr_scheduler)
    ema = build_ema(accelerator, config, net, "net")
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=config_dict(config))
    step = resume(accelerator, output_dir, resume_from)
    augment = build_augmentation(config, camera, accelerator.device)

    def pipeline_of(network: MSTPlusPlus) -> MSTPlusPlusPipeline:
        return MSTPlusPlusPipeline.for_camera(network, camera, project_rgb=config.project_rgb,
                                              default_processing_resolution=config.default_processing_resolution)

    # 3. train: one forward, the reconstruction loss
    def loss_fn(batch) -> tuple[torch.Tensor, dict[str, float]]:
        hsi, rgb = batch["hsi"], batch["rgb"]
        if augment is not None:
            hsi, rgb = augment(hsi, rgb)
        prediction = net(rgb).float()
        loss = reconstruction_loss(prediction, hsi, config.loss, config.mrae_epsilon)
        return loss, {"train/l1": (prediction.detach() - hsi).abs().mean().item()}

    def validate_fn(current: int) -> dict[str, float]:
        unwrapped = full_model(accelerator, net)  # every process: a collective under FSDP
        if not accelerator.is_main_process:
            return {}
        with averaged_weights(ema, unwrapped):
            unwrapped.eval()
            metrics = validate_pipeline(pipeline_of(unwrapped), val_scenes, data_format=config.data_format,
                                        trackers=accelerator.trackers, step=current)
            unwrapped.train()
        return metrics

    step = train_loop(accelerator, config, models=[net], optimizer=optimizer, lr_scheduler=lr_scheduler,
                      loader=loader, dataset=dataset, sampler=sampler, start_step=step, loss_fn=loss_fn,
                      validate_fn=validate_fn, ema=ema, desc="MST++")

    # 4. the complete pipeline (averaged weights if kept), saved atomically with its card; optional push
    accelerator.wait_for_everyone()
    pipeline = pipeline_of(final_model(accelerator, net, ema).eval())
    publish_pipeline(accelerator, config, pipeline, lambda folder: write_card(folder, config, step, pipeline))
    accelerator.end_training()
    return pipeline


def write_card(folder: Path, config: MSTPPConfig, step: int, pipeline: MSTPlusPlusPipeline) -> None:
    from uldm.training.card import write_run_card

    write_run_card(folder, config, title=f"MST++ spectral reconstruction ({Path(config.output_dir).name})",
                   description=(f"MST++ ({pipeline.model_card_training()}), trained from scratch for {step} steps on "
                                f"{config.data_format} data ({config.train_scenes}) with the {config.loss.upper()} "
                                "loss: the regression peer of the diffusion models."),
                   camera=pipeline.camera.name, pipeline_class="MSTPlusPlusPipeline", tags=("mst-plus-plus",))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return stage_main("Train MST++ (the regression peer)", MSTPPConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
