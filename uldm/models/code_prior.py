"""A per-pixel spectral prior for the ULDM: the root-polynomial regression as a pipeline component.

(`uldm.models.scene_prior.SceneMixturePrior` is the scene-adaptive one: the functions below serve both.)

With a prior, the diffusion model generates only what the prior gets wrong: the code becomes
c = SpeUAE.encode(prior(RGB), RGB) + residual / scale, and the VAE carries the (scaled) residual image instead of the
code itself. The residual is half as large as the code, so the same VAE loses far less of it (see the README's
Results); the prior costs one F x B matrix product per pixel (F = 7 features at degree 2).
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..baseline import RootPolynomialRegression, feature_names, root_polynomial_features


class RootPolynomialPrior(ModelMixin, ConfigMixin):
    """rgb (N x 3 x H x W, linear) -> spectra (N x B x H x W) by a root-polynomial regression of `degree`."""

    @register_to_config
    def __init__(self, num_bands: int = 31, degree: int = 2) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(len(feature_names(degree)), num_bands), requires_grad=False)

    @classmethod
    def from_regression(cls, regression: RootPolynomialRegression) -> "RootPolynomialPrior":
        """The weights of a fitted (or loaded) baseline, e.g. `RootPolynomialRegression.fit_scenes(...)`."""
        prior = cls(num_bands=regression.weights.shape[1], degree=regression.degree)
        prior.weights.data.copy_(torch.from_numpy(regression.weights).float())
        return prior

    def image_context(self, rgb: torch.Tensor) -> None:
        """A per-pixel regression needs nothing of the image beyond the pixel (see `SceneMixturePrior`)."""
        return None

    def forward(self, rgb: torch.Tensor, context: None = None, rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"RootPolynomialPrior: expected N x 3 x H x W RGB, got shape {tuple(rgb.shape)}")
        features = root_polynomial_features(rgb.movedim(1, -1).to(self.weights.dtype), self.config.degree)
        return (features @ self.weights).movedim(-1, 1)


def prior_code(prior: Optional[nn.Module], speuae, rgb: torch.Tensor, context: Optional[dict] = None,
               rows: Optional[tuple[int, int]] = None) -> Optional[torch.Tensor]:
    """The SpeUAE code of the prior's spectra for linear RGB (N x 3 x H x W), in SpeUAE's dtype; None without a
    prior, which the two functions below read as "the VAE carries the code itself". A prior that reads image context
    (`SceneMixturePrior`) takes the `context` of the whole image and the `rows` (start, stop) that `rgb` holds of it;
    without them, `rgb` is taken as the whole image."""
    if prior is None:
        return None
    dtype = speuae.linear_decoder.weight.dtype
    rgb = rgb.to(dtype)
    return speuae.encode(prior(rgb, context=context, rows=rows).to(dtype), rgb).clamp(-1, 1)


def code_to_residual(code: torch.Tensor, prior: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """What the VAE encodes in training: the code's residual from the prior's code, scaled into [-1, 1] (the code
    itself without a prior)."""
    if prior is None:
        return code
    return ((code - prior) * scale).clamp(-1, 1)


def residual_to_code(residual: torch.Tensor, prior: Optional[torch.Tensor], scale: float,
                     weight: float = 1.0) -> torch.Tensor:
    """The inverse at inference: prior code + weight x decoded residual / scale (the decoded image itself without a
    prior). A weight below 1 shrinks the generated residual toward the prior (0: the prior alone)."""
    if prior is None:
        return residual
    return (prior + residual.to(prior.dtype) * (weight / scale)).clamp(-1, 1)
