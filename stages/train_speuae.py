"""Stage 1: train SpeUAE, the spectral autoencoder that turns the unobservable part into a 3-channel code image.

    accelerate launch stages/train_speuae.py --config stages/configs/speuae_cave.yaml
    python stages/train_speuae.py --config ... --resume_from_checkpoint latest     # continue a stopped run

The final model is saved with `save_pretrained` to <output_dir>/speuae (config.json records the camera).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from uldm.models import SpeUAE, spaae
from uldm.models.spaae import SpaAELoadError, load_frozen_spaae
from uldm.training import (
    averaged_weights,
    build_ema,
    stage_main,
    ConfigError,
    ModelEMA,
    TrainConfig,
    build_accelerator,
    build_augmentation,
    build_scheduler,
    build_train_loader,
    config_dict,
    final_model,
    full_model,
    resume,
    sample_pixels,
    save_pretrained_atomic,
    scene_paths,
    train_loop,
)


@dataclass
class SpeUAEConfig(TrainConfig):
    # model
    encoder_channels: int = 128
    decoder_channels: int = 64
    num_layers: int = 3
    activation: str = "silu"
    context: int = 1  # 1: per pixel; k (odd): the first layer of each MLP sees a k x k neighbourhood
    normalize_intensity: bool = False  # codes of u / mean(RGB): shading-invariant codes, scale-equivariant output
    refine_steps: int = 0  # Gauss-Newton steps after the one-pass encoder when encoding (validation, stage 2)
    refine_block: int = 1  # those steps share one decoder Jacobian per refine_block x refine_block pixels (1: exact)
    # loss: L1 on spectra (+ spectral angle) (+ the same after the code passes the frozen SpaAE)
    linear_init_pixels: int = 200_000  # start from the PCA code of this many training pixels (0: random start)
    sam_weight: float = 0.0
    mse_weight: float = 0.0  # + this x mean squared error (the quantity PSNR scores; L1 alone favours MRAE)
    vae_path: Optional[str] = None  # a SpaAE (AutoencoderKL / AutoencoderTiny folder, or a pipeline folder with vae/)
    vae_loss_weight: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.activation not in ("silu", "relu", "gelu"):
            raise ConfigError(f"activation must be silu, relu or gelu, got {self.activation!r}")
        if self.refine_steps < 0 or (self.refine_steps and self.context > 1):
            raise ConfigError(f"refine_steps must be >= 0, and 0 with context > 1 (got {self.refine_steps})")
        if self.refine_block < 1:
            raise ConfigError(f"refine_block must be >= 1 (pixels per side of a shared-Jacobian block), got {self.refine_block}")
        if self.vae_path is not None and self.patch_size % 8:
            raise ConfigError(f"patch_size must be a multiple of 8 when vae_path is set, got {self.patch_size}")


def spectral_angle(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos(angle) between per-pixel spectra (N x B x H x W): a smooth stand-in for SAM."""
    return 1 - F.cosine_similarity(pred, target, dim=1, eps=1e-6).mean()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, sam_weight: float = 0.0,
                        mse_weight: float = 0.0) -> torch.Tensor:
    loss = F.l1_loss(pred, target)
    if sam_weight:
        loss = loss + sam_weight * spectral_angle(pred, target)
    if mse_weight:
        loss = loss + mse_weight * F.mse_loss(pred, target)
    return loss


@torch.no_grad()
def validate(model: SpeUAE, scenes: Sequence[Path], config: SpeUAEConfig, device: torch.device) -> dict[str, float]:
    """Round trip (encode, decode; no diffusion) on whole validation scenes, scored with the project's metrics."""
    from uldm.data import read_scene
    from uldm.metrics import evaluate_cube, mean_metrics

    model.eval()
    rows = []
    for path in scenes:
        cube = read_scene(path, format=config.data_format, grid=model.camera.grid).cube
        hsi = torch.from_numpy(cube).permute(2, 0, 1)[None].to(device)
        rgb = model.split.render(hsi, dim=1)
        recon = model.decode(model.encode(hsi, rgb), rgb)  # encode as users will: with the model's refine_steps
        rows.append(evaluate_cube(recon[0].permute(1, 2, 0).float().cpu().numpy(), cube))
    model.train()
    return {f"val/{k}": v for k, v in mean_metrics(rows).items()}


def validate_on_main(accelerator, model: SpeUAE, scenes: Sequence[Path], config: SpeUAEConfig,
                     ema: Optional[ModelEMA] = None) -> dict[str, float]:
    if not accelerator.is_main_process:
        return {}
    with averaged_weights(ema, model):
        return validate(model, scenes, config, accelerator.device)


def vae_round_trip(vae) -> Callable[[torch.Tensor], torch.Tensor]:
    """code -> SpaAE decode(encode(code)): what the code goes through in stage 2."""

    def channel(code: torch.Tensor) -> torch.Tensor:
        return spaae.decode(vae, spaae.encode(vae, code)).to(code.dtype)

    return channel


def train(config: SpeUAEConfig, resume_from: Optional[str] = None) -> SpeUAE:
    """Run stage 1 in this process (one of several under `accelerate launch`); returns the trained model."""
    from accelerate.utils import set_seed

    output_dir = Path(config.output_dir)
    accelerator = build_accelerator(config)
    set_seed(config.seed)

    # 1. data: seeded random patches with RGB rendered on the fly; whole val scenes for the round trip
    camera = config.camera_response()
    dataset, sampler, loader = build_train_loader(config, camera)
    val_scenes = scene_paths(config, config.val_scenes)

    # 2. model, optional frozen SpaAE, optimiser, LR schedule
    model = SpeUAE.for_camera(camera, encoder_channels=config.encoder_channels, decoder_channels=config.decoder_channels,
                              num_layers=config.num_layers, activation=config.activation, context=config.context,
                              normalize_intensity=config.normalize_intensity, refine_steps=config.refine_steps,
                              refine_block=config.refine_block)
    if config.linear_init_pixels:
        rgb, hsi = sample_pixels(dataset, config.linear_init_pixels)
        model.init_linear_code(model.split.unobservable(hsi.double()), rgb)
    try:
        vae = load_frozen_spaae(config.vae_path, accelerator.device) if config.vae_path else None
    except SpaAELoadError as exc:
        raise ConfigError(f"vae_path: {exc}") from exc
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    scheduler = build_scheduler(config, optimizer, accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    ema = build_ema(accelerator, config, model, "speuae")  # None unless use_ema
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=config_dict(config))

    # 3. resume: same step, optimizer, scheduler and RNG state; the batch stream is positioned after it
    step = resume(accelerator, output_dir, resume_from)
    channel = vae_round_trip(vae) if vae is not None else None
    augment = build_augmentation(config, camera, accelerator.device)  # None without mix / tilt / gain

    # 4. train
    def loss_fn(batch) -> tuple[torch.Tensor, dict[str, float]]:
        hsi, rgb = batch["hsi"], batch["rgb"]
        if augment is not None:
            hsi, rgb = augment(hsi, rgb)
        outputs = model(hsi, rgb, code_channel=channel)
        loss = reconstruction_loss(outputs[0], hsi, config.sam_weight, config.mse_weight)
        if channel is None:
            return loss, {}
        through_vae = reconstruction_loss(outputs[2], hsi, config.sam_weight, config.mse_weight)
        return loss + config.vae_loss_weight * through_vae, {"train/loss_through_vae": through_vae.item()}

    started = time.perf_counter()
    step = train_loop(
        accelerator, config, models=[model], optimizer=optimizer, lr_scheduler=scheduler, loader=loader,
        dataset=dataset, sampler=sampler, start_step=step, loss_fn=loss_fn, desc="stage 1",
        validate_fn=lambda _: validate_on_main(accelerator, full_model(accelerator, model), val_scenes, config, ema),
        ema=ema,
    )

    # 5. final model
    accelerator.wait_for_everyone()
    model = final_model(accelerator, model, ema)
    if accelerator.is_main_process:
        save_pretrained_atomic(model, output_dir / "speuae")
        accelerator.print(f"saved {output_dir / 'speuae'} after {step} steps ({time.perf_counter() - started:.0f} s this run)")
    accelerator.end_training()
    return model


def main(argv: Optional[Sequence[str]] = None) -> int:
    return stage_main("Stage 1: train the spectral unobservable-feature autoencoder (SpeUAE)", SpeUAEConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
