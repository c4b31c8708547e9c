"""The SpaAE: the spatial autoencoder whose latent space the UNet works in, of either kind diffusers has.

- `AutoencoderKL` (a real Stable Diffusion VAE, or one trained here): encoding gives a Gaussian posterior;
  latents are `(z - shift_factor) * scaling_factor`.
- `AutoencoderTiny` (the TAESD family, `uldm.models.taesd`): encoding gives the latent itself (deterministic, so
  its spread is zero), scaled by its own `scaling_factor`.

This module is the one place that knows the difference: the pipeline, every trainer, the latent cache and the
benchmarks call `encode`, `encode_posterior`, `decode` and `reconstruct`, all in scaled latents (what the UNet
sees), and load a SpaAE with `load_spaae`, which picks the class a folder's config names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

SPAAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")
RGB_ENCODINGS = ("linear", "srgb")


class SpaAELoadError(ValueError):
    """A SpaAE folder or weight file that cannot be loaded; the message names the file (and the key)."""


def _is_tiny(vae: nn.Module) -> bool:
    return type(vae).__name__ == "AutoencoderTiny"


def _scale(vae: nn.Module, latent: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latent - shift) * vae.config.scaling_factor


def _unscale(vae: nn.Module, latent: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latent / vae.config.scaling_factor + shift


def encode_posterior(vae: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] -> (mean, standard deviation) of the scaled latent; the spread is zero for a tiny
    autoencoder, whose latent is deterministic."""
    images = images.to(vae.dtype)
    if _is_tiny(vae):
        latent = _scale(vae, vae.encode(images).latents)
        return latent, torch.zeros_like(latent)
    posterior = vae.encode(images).latent_dist
    return _scale(vae, posterior.mean), posterior.std * vae.config.scaling_factor


def encode(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> scaled latents (the posterior's mode for a KL autoencoder), in the SpaAE's dtype."""
    return encode_posterior(vae, images)[0]


def decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images (nominally [-1, 1], not clamped), in the SpaAE's dtype."""
    return vae.decode(_unscale(vae, latents).to(vae.dtype)).sample


def reconstruct(vae: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction, scaled latents, KL to the prior) of one training pass: a KL autoencoder decodes a
    posterior sample (as it was trained), a tiny one its latent (KL zero). One call, so DDP syncs every gradient."""
    images = images.to(vae.dtype)
    if _is_tiny(vae):
        latent = vae.encode(images).latents
        return vae.decode(latent).sample, _scale(vae, latent), latent.new_zeros(())
    posterior = vae.encode(images).latent_dist
    latent = posterior.sample()
    return vae.decode(latent).sample, _scale(vae, latent), posterior.kl().mean()


def rgb_image(rgb: torch.Tensor, encoding: str = "linear") -> torch.Tensor:
    """Linear RGB in [0, 1] -> the [-1, 1] image the SpaAE encodes as the condition: the values as they are
    ("linear"), or sRGB-encoded ("srgb", IEC 61966-2-1), the encoding of the photographs that pretrained autoencoders
    and UNets learnt from."""
    if encoding == "srgb":
        rgb = rgb.clamp(0, 1)
        rgb = torch.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)
    elif encoding != "linear":
        raise ValueError(f"rgb encoding must be one of {RGB_ENCODINGS}, got {encoding!r}")
    return rgb * 2 - 1


def decoder_modules(vae: nn.Module) -> list[nn.Module]:
    """What "the decoder" is when only it is fine-tuned (stage 2's `train_vae_decoder`)."""
    if _is_tiny(vae):
        return [vae.decoder]
    return [vae.decoder, vae.post_quant_conv]


def downsampling_factor(vae: nn.Module) -> int:
    """Image pixels per latent pixel along each side (8 for SD's VAEs and TAESD)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


# ------------------------------------------------------------------------------------------------- loading
def spaae_class_name(folder: Union[str, Path]) -> str:
    """The `_class_name` a SpaAE folder's config.json names; an error naming the file if it is not a SpaAE."""
    config = Path(folder) / "config.json"
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except OSError as exc:
        raise SpaAELoadError(f"{config}: cannot read the SpaAE config ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise SpaAELoadError(f"{config}: not valid JSON ({exc})") from exc
    if name not in SPAAE_CLASSES:
        raise SpaAELoadError(f"{config}: _class_name {name!r} is not a SpaAE (expected one of {list(SPAAE_CLASSES)})")
    return name


def load_spaae(path: Union[str, Path], variant: Optional[str] = None) -> nn.Module:
    """The AutoencoderKL or AutoencoderTiny saved in `path` (a VAE folder, or a pipeline / SD folder holding
    vae/), as its config names it."""
    import diffusers

    folder = Path(path)
    if not (folder / "config.json").exists() and (folder / "vae" / "config.json").exists():
        folder = folder / "vae"
    if not (folder / "config.json").exists():
        raise SpaAELoadError(f"{path}: no config.json there or in {path}/vae (expected a diffusers AutoencoderKL "
                             "or AutoencoderTiny)")
    cls = getattr(diffusers, spaae_class_name(folder))
    try:
        return cls.from_pretrained(str(folder), variant=variant)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise SpaAELoadError(f"{folder}: cannot load the {cls.__name__} ({exc})") from exc


def load_frozen_spaae(path: Union[str, Path], device: torch.device) -> nn.Module:
    """`load_spaae`, frozen, in eval mode, on `device` (stage 1's optional loss through the SpaAE)."""
    vae = load_spaae(path)
    vae.requires_grad_(False)
    return vae.eval().to(device)
