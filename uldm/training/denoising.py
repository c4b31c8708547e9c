"""The Stable Diffusion training objective: noise latents with the pretrained scheduler, predict its target.

Stage 2 (conditioned on the RGB latent) and RGB pre-training (unconditional) share it, so a UNet pre-trained on
photographs learnt exactly the task stage 2 continues, under the same scheduler and prediction type.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .config import ConfigError


def diffusion_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict under the pretrained scheduler's prediction type."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ConfigError(f"unsupported prediction_type {kind!r} in the pretrained scheduler")


def denoising_loss(unet, noise_scheduler, latents: torch.Tensor, condition: Optional[torch.Tensor],
                   prompt: torch.Tensor, min_timestep: int = 0) -> torch.Tensor:
    """Noise the latents at random timesteps (from `min_timestep` up); MSE of the UNet's prediction of its target.
    With a `condition` (stage 2: the RGB latent), the UNet sees it beside the noisy latent (its conv_in widened);
    without one (RGB pre-training), the noisy latent alone: Stable Diffusion's own objective."""
    last = noise_scheduler.config.num_train_timesteps
    if min_timestep >= last:
        raise ConfigError(f"min_train_timestep must be below the scheduler's {last} training timesteps")
    noise = torch.randn_like(latents)
    timesteps = torch.randint(min_timestep, last, (len(latents),), device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    dtype = next(unet.parameters()).dtype  # fp32 master weights under autocast; bf16/fp16 under DeepSpeed
    model_input = noisy if condition is None else torch.cat([condition, noisy], dim=1)
    prediction = unet(model_input.to(dtype), timesteps,
                      encoder_hidden_states=prompt.expand(len(latents), -1, -1).to(dtype)).sample
    return F.mse_loss(prediction.float(), diffusion_target(noise_scheduler, latents, noise, timesteps).float())
