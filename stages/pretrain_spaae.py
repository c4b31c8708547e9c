"""Adapt the SpaAE (the Stable Diffusion checkpoint's autoencoder) to what it will carry: RGB and code images.

    accelerate launch stages/pretrain_spaae.py --config stages/configs/spaae_cave_taesd3.yaml

Stage 2 passes two kinds of image through the SpaAE: the RGB condition and the SpeUAE code image. A pretrained
autoencoder (TAESD, `python -m uldm.sd_scaffold ... --vae taesd3`) knows natural images but has never seen a
code image; one with random weights (`python -m uldm.sd_scaffold ... --vae kl`) knows nothing. This stage trains
both halves on CAVE RGB patches and their code images (L1, plus a small KL term for a KL autoencoder).

`latent_anchor_weight` keeps the encoder's RGB latents where they started (mean squared distance to the starting
encoder's), so a UNet pretrained in that latent space (`stages/pretrain_rgb.py`) still speaks it after adaptation.

The result is a copy of `sd_folder` with the adapted vae/ in <output_dir>/sd (sd_folder itself is never modified),
which stage 2 loads like any Stable Diffusion checkpoint.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from uldm.models import SpeUAE, spaae
from uldm.models.sd_adapter import save_sd_folder
from uldm.training import (
    stage_main,
    ConfigError,
    TrainConfig,
    build_accelerator,
    build_scheduler,
    build_train_loader,
    config_dict,
    full_model,
    resume,
    train_loop,
)


@dataclass
class SpaAEConfig(TrainConfig):
    sd_folder: Optional[str] = None  # the SD checkpoint whose vae/ is adapted (required; never modified)
    speuae_path: Optional[str] = None  # stage-1 output: turns spectra into the code images to reconstruct (required)
    kl_weight: float = 1e-6  # KL autoencoders only (a tiny autoencoder's latent is deterministic)
    latent_anchor_weight: float = 0.0  # x mean squared distance of RGB latents from the starting encoder's
    rgb_encoding: str = "linear"  # how RGB patches are encoded for the SpaAE: as stage 2's rgb_encoding will be
    learning_rate: float = 1e-3

    def validate(self) -> None:
        super().validate()
        for name in ("sd_folder", "speuae_path"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required")
        if self.rgb_encoding not in spaae.RGB_ENCODINGS:
            raise ConfigError(f"rgb_encoding must be one of {spaae.RGB_ENCODINGS}, got {self.rgb_encoding!r}")
        if self.latent_anchor_weight < 0:
            raise ConfigError(f"latent_anchor_weight must be >= 0, got {self.latent_anchor_weight}")


class VAEObjective(nn.Module):
    """The SpaAE's training pass (`spaae.reconstruct`) as one module forward, so DDP syncs every gradient."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, scaled latents, KL)."""
        return spaae.reconstruct(self.vae, images)

    def fresh_copy(self) -> "VAEObjective":
        """The same wrapper around a new SpaAE of the same config: what `full_model` loads gathered weights into."""
        return VAEObjective(type(self.vae).from_config(self.vae.config))


def train(config: SpaAEConfig, resume_from: Optional[str] = None):
    from accelerate.utils import set_seed

    accelerator = build_accelerator(config)
    set_seed(config.seed)
    try:
        vae = spaae.load_spaae(Path(config.sd_folder) / "vae")
    except spaae.SpaAELoadError as exc:
        raise ConfigError(f"sd_folder: {exc}") from exc
    anchor = copy.deepcopy(vae).requires_grad_(False).eval() if config.latent_anchor_weight else None
    speuae = SpeUAE.from_pretrained(config.speuae_path).requires_grad_(False).eval()
    dataset, sampler, loader = build_train_loader(config, speuae.camera)
    objective = VAEObjective(vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    lr_scheduler = build_scheduler(config, optimizer, accelerator.num_processes)
    objective, optimizer, loader, lr_scheduler = accelerator.prepare(objective, optimizer, loader, lr_scheduler)
    speuae.to(accelerator.device)
    if anchor is not None:
        anchor.to(accelerator.device)
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=config_dict(config))
    step = resume(accelerator, Path(config.output_dir), resume_from)

    def loss_fn(batch):
        rgb = spaae.rgb_image(batch["rgb"].to(accelerator.device), config.rgb_encoding)
        with torch.no_grad():
            code = speuae.encode(batch["hsi"].to(accelerator.device), batch["rgb"].to(accelerator.device))
        images = torch.cat([rgb, code])  # both things stage 2 passes through the SpaAE
        reconstruction, latents, kl = objective(images)
        l1 = F.l1_loss(reconstruction.float(), images.float())
        loss, logs = l1 + config.kl_weight * kl, {"train/l1": l1.item(), "train/kl": kl.item()}
        if anchor is not None:
            with torch.no_grad():
                start = spaae.encode(anchor, rgb)
            drift = F.mse_loss(latents[:len(rgb)].float(), start.float())
            loss = loss + config.latent_anchor_weight * drift
            logs["train/rgb_latent_drift"] = drift.item()
        return loss, logs

    train_loop(accelerator, config, models=[objective], optimizer=optimizer, lr_scheduler=lr_scheduler, loader=loader,
               dataset=dataset, sampler=sampler, start_step=step, loss_fn=loss_fn, desc="SpaAE")
    accelerator.wait_for_everyone()
    vae = full_model(accelerator, objective, rebuild=VAEObjective.fresh_copy).vae  # every process (FSDP: collective)
    if accelerator.is_main_process:
        folder = save_sd_folder(config.sd_folder, Path(config.output_dir) / "sd", vae=vae)
        accelerator.print(f"wrote {folder} ({config.sd_folder} with the adapted SpaAE in vae/)")
    accelerator.end_training()
    return vae


def main(argv: Optional[Sequence[str]] = None) -> int:
    return stage_main("Adapt the SpaAE (the SD checkpoint's autoencoder) to RGB and code images", SpaAEConfig, train,
                      argv)


if __name__ == "__main__":
    sys.exit(main())
