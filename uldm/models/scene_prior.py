"""A scene-adaptive spectral prior: a bank of per-scene regressions, mixed per pixel by the image's palette.

What RGB leaves unknown is mostly scene-level (which pigments, dyes and plastics a scene holds): a regression
fitted on one scene explains that scene far better than one fitted on all of them. This prior keeps one
root-polynomial regression per training scene (the experts) beside the global one, and mixes them per pixel:

    spectrum(p) = Σ_k w_k(p) · regression_k(rgb(p)),   w(p) = softmax_k(gate · features_k(p))

Per expert k and pixel p the features are (log scale; "palette" = histogram of chromaticities):
  0. is the global expert (a bias);
  1. density: how often k's scene holds p's chromaticity;
  2. fit error: how badly k's own regression explains that chromaticity in its own scene;
  3. local context: the resemblance (Bhattacharyya coefficient) of k's palette to the palette around p;
  4. image context: the resemblance of k's palette to the whole image's.
Features 3 and 4 are the context path (`use_context`); without them the gate sees p's colour alone. The gate has
one weight per feature, fitted leave-scene-out on the training scenes (each scene mixed from the other scenes'
experts, `uldm.scene_prior_fit`), so it learns to choose experts for scenes it has not seen, whatever their count.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..baseline import feature_names, root_polynomial_features

CONTEXT_SIDE = 64        # the palette around each pixel is computed on a copy of the image at most this large
DARK_LEVEL = 0.02        # pixels darker than this (R + G + B) count less in palettes: their chromaticity is noise
DENSITY_FLOOR = 1e-4     # log floors of the features
ERROR_FLOOR = 1e-6
AFFINITY_FLOOR = 1e-3
NUM_FEATURES = 5
CONTEXT_FEATURES = (3, 4)


# ----------------------------------------------------------------------------------------------- palettes
def chromaticity_bins(rgb: torch.Tensor, bins: int) -> torch.Tensor:
    """Linear RGB (..., 3) -> the index of its (r, g) chromaticity bin on a bins x bins grid over [0, 1]^2."""
    total = rgb.clamp_min(0).sum(-1).clamp_min(1e-6)
    r, g = (rgb[..., 0].clamp_min(0) / total), (rgb[..., 1].clamp_min(0) / total)
    row = (r * bins).long().clamp(0, bins - 1)
    col = (g * bins).long().clamp(0, bins - 1)
    return row * bins + col


def brightness_weight(rgb: torch.Tensor) -> torch.Tensor:
    """How much a pixel (..., 3) counts in a palette: 1 when bright enough, less when its chromaticity is noise."""
    return (rgb.clamp_min(0).sum(-1) / DARK_LEVEL).clamp(max=1.0)


def smooth_palette(histogram: torch.Tensor, bins: int) -> torch.Tensor:
    """(..., bins²) histograms blurred by a 3 x 3 binomial kernel over the chromaticity grid, then normalised, so
    that nearby chromaticities count as close and an empty bin is not an impossible colour."""
    shape = histogram.shape
    grid = histogram.reshape(-1, 1, bins, bins)
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=grid.dtype, device=grid.device)
    kernel = (kernel[:, None] * kernel[None, :] / 16).reshape(1, 1, 3, 3)
    blurred = F.conv2d(F.pad(grid, (1, 1, 1, 1), mode="replicate"), kernel).reshape(shape)
    return blurred / blurred.sum(-1, keepdim=True).clamp_min(1e-12)


def palette(rgb: torch.Tensor, bins: int) -> torch.Tensor:
    """The smoothed chromaticity histogram (bins²,) of RGB pixels (P x 3), bright pixels counting most."""
    histogram = torch.zeros(bins * bins, dtype=torch.float64, device=rgb.device)
    histogram.index_add_(0, chromaticity_bins(rgb, bins), brightness_weight(rgb).double())
    return smooth_palette(histogram, bins)


def context_affinities(rgb: torch.Tensor, palettes: torch.Tensor, bins: int, window: float) -> tuple[torch.Tensor, torch.Tensor]:
    """How much each expert's palette (K x bins²) resembles the palette of an image (N x 3 x H x W, linear RGB):
    (local: N x K x h x w on a copy at most `CONTEXT_SIDE` pixels large, the palette within a Gaussian window of
    `window` times the longer side around each pixel; whole image: N x K). Bhattacharyya coefficients in [0, 1]."""
    height, width = rgb.shape[-2:]
    scale = min(1.0, CONTEXT_SIDE / max(height, width))
    small = rgb if scale == 1.0 else F.interpolate(rgb, scale_factor=scale, mode="area")
    pixels = small.movedim(1, -1)                                            # N x h x w x 3
    one_hot = F.one_hot(chromaticity_bins(pixels, bins), bins * bins).to(palettes.dtype)
    counts = (one_hot * brightness_weight(pixels).unsqueeze(-1).to(palettes.dtype)).movedim(-1, 1)  # N x b² x h x w
    roots = palettes.clamp_min(0).sqrt()                                     # K x b²
    image = smooth_palette(counts.sum((-2, -1)), bins)                       # N x b²
    whole = image.sqrt() @ roots.T                                           # N x K
    sigma = max(window * max(small.shape[-2:]), 0.5)
    local = smooth_palette(gaussian_blur(counts, sigma).movedim(1, -1), bins)  # N x h x w x b²
    return (local.sqrt() @ roots.T).movedim(-1, 1), whole


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N x C x h x w maps (reflect-padded, truncated at 3 sigma), as two matrix products
    (a depthwise convolution over hundreds of palette channels is many times slower on a CPU)."""
    height, width = x.shape[-2:]
    return blur_matrix(height, sigma, x) @ x @ blur_matrix(width, sigma, x).T


def blur_matrix(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """The size x size matrix of a 1-D Gaussian blur (reflect-padded, truncated at 3 sigma)."""
    radius = min(int(math.ceil(3 * sigma)), size - 1)
    matrix = torch.zeros(size, size, dtype=like.dtype, device=like.device)
    if radius < 1:
        return matrix.fill_diagonal_(1.0)
    taps = torch.arange(-radius, radius + 1, device=like.device)
    kernel = torch.exp(-0.5 * (taps.to(like.dtype) / sigma) ** 2)
    kernel = kernel / kernel.sum()
    rows = torch.arange(size, device=like.device)
    sources = (rows[:, None] + taps[None, :]).abs()                  # reflect at 0 ...
    sources = torch.where(sources > size - 1, 2 * (size - 1) - sources, sources)  # ... and at size - 1
    matrix.index_put_((rows[:, None].expand_as(sources), sources), kernel.expand_as(sources), accumulate=True)
    return matrix


def rows_of(context: torch.Tensor, rows: Optional[tuple[int, int, int]], width: int) -> torch.Tensor:
    """A low-resolution N x K x h x w map, bilinearly upsampled to the rows start..stop of an image `height` x
    `width` (`rows` = (start, stop, height)), without upsampling the rest of the image."""
    start, stop, height = rows
    ys = (torch.arange(start, stop, dtype=context.dtype, device=context.device) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=context.dtype, device=context.device) + 0.5) / width * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)  # x, y order, as grid_sample wants
    grid = grid.unsqueeze(0).expand(len(context), -1, -1, -1)
    return F.grid_sample(context, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------------------------------------------- model
class SceneMixturePrior(ModelMixin, ConfigMixin):
    """rgb (N x 3 x H x W, linear) -> spectra (N x B x H x W): per-pixel mixtures of `num_experts` regressions.

    Expert 0 is the regression fitted on all training scenes; experts 1.. one each per training scene. Built by
    `uldm.scene_prior_fit.fit_scene_mixture_prior`; the weights below are zeros until then.
    """

    @register_to_config
    def __init__(self, num_bands: int = 31, degree: int = 2, num_experts: int = 2, bins: int = 16,
                 context_window: float = 0.125, use_context: bool = True, scene_names: Optional[list] = None) -> None:
        super().__init__()
        features = len(feature_names(degree))
        self.expert_weights = nn.Parameter(torch.zeros(num_experts, features, num_bands), requires_grad=False)
        self.palettes = nn.Parameter(torch.full((num_experts, bins * bins), 1.0 / bins ** 2), requires_grad=False)
        self.fit_errors = nn.Parameter(torch.ones(num_experts, bins * bins), requires_grad=False)
        self.gate = nn.Parameter(torch.zeros(NUM_FEATURES), requires_grad=False)

    # ------------------------------------------------------------------------------------------ pieces
    def gate_mask(self) -> torch.Tensor:
        """1 for the features the gate uses: all, or without the context path."""
        mask = torch.ones(NUM_FEATURES, dtype=self.gate.dtype, device=self.gate.device)
        if not self.config.use_context:
            mask[list(CONTEXT_FEATURES)] = 0
        return mask

    def image_context(self, rgb: torch.Tensor) -> Optional[dict[str, torch.Tensor]]:
        """What the gate needs of the whole image (N x 3 x H x W), small whatever the image's size: the local
        palette affinities at low resolution and the whole-image ones. Computed once per image, so that spectra can
        then be made a band of rows at a time (`forward(..., rows=...)`). None without the context path."""
        if not self.config.use_context:
            return None
        local, whole = context_affinities(rgb.double(), self.palettes.double(), self.config.bins,
                                          self.config.context_window)
        return {"local": local.float(), "image": whole.float(), "size": rgb.shape[-2:]}

    def gate_features(self, rgb: torch.Tensor, context: Optional[dict], rows: Optional[tuple[int, int]]) -> torch.Tensor:
        """N x H x W x K x 5 features of every expert at every pixel of `rgb` (N x 3 x H x W; the rows `rows` =
        (start, stop) of the image `context` was computed from, or the whole of it)."""
        pixels = rgb.movedim(1, -1)
        index = chromaticity_bins(pixels, self.config.bins)                    # N x H x W
        density = self.palettes.T[index].clamp_min(DENSITY_FLOOR).log()        # N x H x W x K
        error = self.fit_errors.T[index].clamp_min(ERROR_FLOOR).log()
        is_global = torch.zeros_like(density)
        is_global[..., 0] = 1
        if context is None:
            local = image = torch.zeros_like(density)
        else:
            height, width = context["size"]
            start, stop = rows if rows is not None else (0, height)
            local = rows_of(context["local"].to(density.dtype), (start, stop, height), width).movedim(1, -1)
            local = local.clamp_min(AFFINITY_FLOOR).log()
            image = context["image"].to(density.dtype).clamp_min(AFFINITY_FLOOR).log()[:, None, None, :].expand_as(density)
        return torch.stack([is_global, density, error, local, image], dim=-1)

    def mixing_weights(self, features: torch.Tensor, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
        """N x ... x K x 5 features -> N x ... x K weights summing to 1; the experts `exclude` (N x K, True) marks
        get none."""
        logits = features @ (self.gate * self.gate_mask()).to(features.dtype)
        if exclude is not None:
            shape = (len(exclude),) + (1,) * (logits.ndim - 2) + (exclude.shape[-1],)
            logits = logits.masked_fill(exclude.to(logits.device).reshape(shape), float("-inf"))
        return torch.softmax(logits, dim=-1)

    def excluding(self, scene_names: Sequence[Optional[str]]) -> Callable[..., torch.Tensor]:
        """This prior as a callable that leaves out, for image i, the expert of scene `scene_names[i]` (None or a
        name not in the bank: nothing left out). Stage 2 trains with it, so that the code's residual it learns
        is the one a scene outside the bank leaves, as at inference."""
        names = list(self.config.scene_names or [])
        exclude = torch.zeros(len(scene_names), self.config.num_experts, dtype=torch.bool)
        for row, name in enumerate(scene_names):
            if name in names:
                exclude[row, 1 + names.index(name)] = True
        return functools.partial(self.forward, exclude=exclude)

    # ------------------------------------------------------------------------------------------ call
    def forward(self, rgb: torch.Tensor, context: Optional[dict] = None, rows: Optional[tuple[int, int]] = None,
                exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Spectra N x B x H x W. Give `context` (from `image_context` of the whole image) and `rows` when `rgb`
        is a band of rows of it; by default the context is that of `rgb` itself. `exclude` (N x K bool) leaves
        experts out per image (see `excluding`)."""
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"SceneMixturePrior: expected N x 3 x H x W RGB, got shape {tuple(rgb.shape)}")
        if context is None and self.config.use_context:
            context, rows = self.image_context(rgb), None
        weights = self.mixing_weights(self.gate_features(rgb, context, rows), exclude).to(self.expert_weights.dtype)
        features = root_polynomial_features(rgb.movedim(1, -1).to(self.expert_weights.dtype), self.config.degree)
        spectra = torch.zeros(*features.shape[:-1], self.config.num_bands, dtype=features.dtype, device=rgb.device)
        for k, expert in enumerate(self.expert_weights):  # one expert at a time: memory of one spectra image
            spectra += weights[..., k:k + 1] * (features @ expert)
        return spectra.movedim(-1, 1)
