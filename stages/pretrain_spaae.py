"""Pre-train a small SpaAE (the SD VAE) on RGB and code images, for when no pretrained SD VAE can be downloaded.

    accelerate launch stages/pretrain_spaae.py --config stages/configs/spaae_cave_small.yaml

A real Stable Diffusion VAE already reconstructs images well, and stage 2 starts from it. The small SD-architecture
checkpoint made by `python -m uldm.sd_scaffold` has random weights, so before stage 2 its VAE learns to reconstruct
what it will carry: RGB images (the condition) and SpeUAE code images (the target), with the usual L1 + small KL
loss. The trained VAE is written back into the SD folder (vae/), which stage 2 then loads like any SD checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from uldm.models import SpeUAE
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
    save_pretrained_atomic,
    train_loop,
)


@dataclass
class SpaAEConfig(TrainConfig):
    sd_folder: Optional[str] = None  # the SD checkpoint whose vae/ is trained and replaced (required)
    speuae_path: Optional[str] = None  # stage-1 output: turns spectra into the code images to reconstruct (required)
    kl_weight: float = 1e-6
    learning_rate: float = 1e-3

    def validate(self) -> None:
        super().validate()
        for name in ("sd_folder", "speuae_path"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required")


class VAEObjective(nn.Module):
    """encode -> sample -> decode, returning (L1 reconstruction, KL): one forward, so DDP syncs every gradient."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        return F.l1_loss(reconstruction, images), posterior.kl().mean()

    def fresh_copy(self) -> "VAEObjective":
        """The same wrapper around a new VAE of the same config: what `full_model` loads gathered weights into."""
        return VAEObjective(type(self.vae).from_config(self.vae.config))


def train(config: SpaAEConfig, resume_from: Optional[str] = None):
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL

    accelerator = build_accelerator(config)
    set_seed(config.seed)
    vae_folder = Path(config.sd_folder) / "vae"
    if not (vae_folder / "config.json").exists():
        raise ConfigError(f"sd_folder {config.sd_folder}: no vae/config.json")
    vae = AutoencoderKL.from_pretrained(str(vae_folder))
    speuae = SpeUAE.from_pretrained(config.speuae_path).requires_grad_(False).eval()
    dataset, sampler, loader = build_train_loader(config, speuae.camera)
    objective = VAEObjective(vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    lr_scheduler = build_scheduler(config, optimizer, accelerator.num_processes)
    objective, optimizer, loader, lr_scheduler = accelerator.prepare(objective, optimizer, loader, lr_scheduler)
    speuae.to(accelerator.device)
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=config_dict(config))
    step = resume(accelerator, Path(config.output_dir), resume_from)

    def loss_fn(batch):
        with torch.no_grad():
            code = speuae.encode(batch["hsi"], batch["rgb"])
        images = torch.cat([batch["rgb"] * 2 - 1, code])  # both things stage 2 passes through the VAE
        l1, kl = objective(images)
        return l1 + config.kl_weight * kl, {"train/l1": l1.item(), "train/kl": kl.item()}

    train_loop(accelerator, config, models=[objective], optimizer=optimizer, lr_scheduler=lr_scheduler, loader=loader,
               dataset=dataset, sampler=sampler, start_step=step, loss_fn=loss_fn, desc="SpaAE")
    accelerator.wait_for_everyone()
    vae = full_model(accelerator, objective, rebuild=VAEObjective.fresh_copy).vae  # every process (FSDP: collective)
    if accelerator.is_main_process:
        save_pretrained_atomic(vae, vae_folder)
        accelerator.print(f"wrote the trained SpaAE to {vae_folder}")
    accelerator.end_training()
    return vae


def main(argv: Optional[Sequence[str]] = None) -> int:
    return stage_main("Pre-train a small SpaAE (SD VAE) on RGB and code images", SpaAEConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
