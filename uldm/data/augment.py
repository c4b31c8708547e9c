"""Batch augmentations of spectral training patches, applied in the training step (after the DataLoader).

They make spectra the training scenes do not have, where a model has to generalise (stage 1's round trip scores
~4 dB higher on CAVE training scenes than on validation scenes without them):

- `mix_patches`: a mixture of two materials is a physical spectrum too, and the camera is linear, so its RGB
  mixes the same way;
- `tilt_spectra`: the same materials under a bluer or redder light (a smooth gain across the bands);
- `scale_patches`: the same patch brighter or darker (exposure, shading); the camera is linear, so RGB scales too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nullspace import ObservableSplit


def mix_patches(hsi: torch.Tensor, rgb: torch.Tensor, probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random `probability` share of the patches (N x C x H x W) by w·(another patch) + (1-w)·itself,
    w ~ U(0, 1) per patch, on spectra and RGB alike (exact for clean RGB; for degraded RGB it is the mixture of
    the degraded ones)."""
    n = hsi.shape[0]
    weight = torch.rand(n, 1, 1, 1, device=hsi.device) * (torch.rand(n, 1, 1, 1, device=hsi.device) < probability)
    partner = torch.randperm(n, device=hsi.device)
    return hsi + weight * (hsi[partner] - hsi), rgb + weight * (rgb[partner] - rgb)


def tilt_spectra(hsi: torch.Tensor, std: float) -> torch.Tensor:
    """Multiply each patch's spectra (N x B x H x W) by exp(a·x), x running from -1 to 1 across the bands,
    a ~ N(0, std²) per patch, normalised to a mean gain of 1. The RGB must be rendered again afterwards."""
    x = torch.linspace(-1, 1, hsi.shape[1], device=hsi.device, dtype=hsi.dtype).view(1, -1, 1, 1)
    gain = torch.exp(torch.randn(hsi.shape[0], 1, 1, 1, device=hsi.device, dtype=hsi.dtype) * std * x)
    return hsi * (gain / gain.mean(dim=1, keepdim=True))


def scale_patches(hsi: torch.Tensor, rgb: torch.Tensor, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiply each patch (spectra and RGB alike) by exp(g), g ~ N(0, std²): one exposure gain per patch
    (exact for clean RGB; for degraded RGB it scales the degraded values, noise included)."""
    gain = torch.exp(torch.randn(hsi.shape[0], 1, 1, 1, device=hsi.device, dtype=hsi.dtype) * std)
    return hsi * gain, rgb * gain


@dataclass
class BatchAugmentation:
    """Tilts (RGB rendered again with the camera), then mixtures, then exposure gains, as the config's
    `tilt_std` / `mix_probability` / `gain_std` ask. Draws from torch's global generator, whose state accelerate
    checkpoints, so resume stays exact."""

    split: ObservableSplit
    mix_probability: float = 0.0
    tilt_std: float = 0.0
    gain_std: float = 0.0

    def __call__(self, hsi: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tilt_std:
            hsi = tilt_spectra(hsi, self.tilt_std)
            rgb = self.split.render(hsi, dim=1)
        if self.mix_probability:
            hsi, rgb = mix_patches(hsi, rgb, self.mix_probability)
        if self.gain_std:
            hsi, rgb = scale_patches(hsi, rgb, self.gain_std)
        return hsi, rgb
