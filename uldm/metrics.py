"""Reconstruction quality, NTIRE 2022 conventions: MRAE, RMSE, PSNR, SAM (and optionally SSIM).

Cubes are H x W x B (bands last) unless `channel_axis` says otherwise. Every function accepts NumPy arrays or
torch tensors, computes in float64 on the input's device, never modifies its inputs, and returns a Python float.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[np.ndarray, torch.Tensor]

METRIC_KEYS = ("mrae", "rmse", "psnr", "sam")
"""Always reported by `evaluate_cube`, in this order ("ssim" follows when asked for)."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _as_float64(x: ArrayLike) -> torch.Tensor:
    """A float64 tensor view of `x` (a copy when a cast is needed); NumPy goes through torch on the CPU."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    array = np.ascontiguousarray(x, dtype=np.float64)
    if not array.flags.writeable:  # torch refuses to share read-only memory
        array = array.copy()
    return torch.from_numpy(array)


def _pair(pred: ArrayLike, gt: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float64 tensors of the same shape; broadcasting would silently score the wrong thing."""
    p, g = _as_float64(pred), _as_float64(gt)
    if p.shape != g.shape:
        raise ValueError(
            f"prediction and ground truth must have the same shape, got {tuple(p.shape)} and {tuple(g.shape)}"
        )
    return p, g.to(p.device)


def _bands_last(x: torch.Tensor, channel_axis: int) -> torch.Tensor:
    if x.ndim != 3:
        raise ValueError(f"expected a 3-D cube (H x W x B), got shape {tuple(x.shape)}")
    return torch.movedim(x, channel_axis, -1)


# ------------------------------------------------------------------------------------------ the metrics
def mrae(pred: ArrayLike, gt: ArrayLike, eps: float = 1e-3, channel_axis: int = -1) -> float:
    """Mean relative absolute error, mean(|pred - gt| / (gt + eps)).

    NTIRE 2022 divides by gt alone (eps = 0). CAVE cubes contain zero-valued pixels, which would make the score
    infinite, so the default adds eps = 1e-3 to the denominator; pass eps=0 for the challenge's exact formula.
    `channel_axis` is accepted for a uniform signature; the mean runs over every element.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    p, g = _pair(pred, gt)
    return float(((p - g).abs() / (g + eps)).mean())


def rmse(pred: ArrayLike, gt: ArrayLike, channel_axis: int = -1) -> float:
    """Root mean squared error over every element, values used as they are (no clamping)."""
    p, g = _pair(pred, gt)
    return float(((p - g) ** 2).mean().sqrt())


def psnr(pred: ArrayLike, gt: ArrayLike, channel_axis: int = -1) -> float:
    """Peak signal-to-noise ratio in dB with peak 1, after clamping both cubes to [0, 1]; inf when identical."""
    p, g = _pair(pred, gt)
    mse = float(((p.clamp(0.0, 1.0) - g.clamp(0.0, 1.0)) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def sam(pred: ArrayLike, gt: ArrayLike, channel_axis: int = -1, eps: float = 1e-12) -> float:
    """Mean spectral angle in degrees between the per-pixel spectra along `channel_axis`.

    Each norm is clamped below at `eps` and the cosine to [-1, 1], so the score is never NaN. A zero spectrum
    has no direction: its dot product with anything is 0, so its angle is defined as 90 degrees.
    """
    p, g = _pair(pred, gt)
    p, g = torch.movedim(p, channel_axis, -1), torch.movedim(g, channel_axis, -1)
    norms = p.norm(dim=-1).clamp_min(eps) * g.norm(dim=-1).clamp_min(eps)
    cosine = ((p * g).sum(dim=-1) / norms).clamp(-1.0, 1.0)
    return float(torch.rad2deg(torch.arccos(cosine)).mean())


def _gaussian_window(device: torch.device) -> torch.Tensor:
    """The 11 x 11 Gaussian (sigma 1.5) of Wang et al. 2004, summing to 1, shaped for conv2d."""
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def ssim(pred: ArrayLike, gt: ArrayLike, channel_axis: int = -1) -> float:
    """Structural similarity (Wang et al. 2004) of each band as a grey image, averaged over bands.

    Standard constants: Gaussian window 11 px, sigma 1.5, data range 1, K1 = 0.01, K2 = 0.03; local statistics
    over 'valid' windows only (no padding), so both spatial sides must be at least 11 px. Values are not clamped.
    """
    p, g = _pair(pred, gt)
    p, g = _bands_last(p, channel_axis), _bands_last(g, channel_axis)
    height, width = p.shape[0], p.shape[1]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} px, got {height} x {width}")
    window = _gaussian_window(p.device)
    # (B, 1, H, W): each band is filtered on its own.
    x, y = p.permute(2, 0, 1)[:, None], g.permute(2, 0, 1)[:, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())


# --------------------------------------------------------------------------------------------- cropping
def central_crop(cube: ArrayLike, border: int, channel_axis: int = -1) -> ArrayLike:
    """Drop `border` pixels from each side of both spatial axes (NTIRE scores ARAD at [128:-128, 128:-128]).

    The spatial axes are the two that are not `channel_axis`. Returns a view of the same type as `cube`.
    """
    if border < 0:
        raise ValueError(f"crop border must be >= 0, got {border}")
    if cube.ndim != 3:
        raise ValueError(f"expected a 3-D cube, got shape {tuple(cube.shape)}")
    if border == 0:
        return cube
    channel = channel_axis % 3
    index: list[slice] = []
    for axis in range(3):
        if axis == channel:
            index.append(slice(None))
            continue
        if cube.shape[axis] <= 2 * border:
            raise ValueError(
                f"cropping {border} px from each side of a cube of shape {tuple(cube.shape)} leaves nothing "
                f"along axis {axis}"
            )
        index.append(slice(border, cube.shape[axis] - border))
    return cube[tuple(index)]


# ------------------------------------------------------------------------------------------- whole cubes
def evaluate_cube(
    pred: ArrayLike, gt: ArrayLike, crop: int = 0, with_ssim: bool = False, channel_axis: int = -1
) -> dict[str, float]:
    """All metrics of one reconstruction: keys mrae, rmse, psnr, sam (and ssim), after an optional central crop.

    Mismatched shapes or NaN in either cube raise ValueError: a silently broadcast or NaN score is worse than none.
    """
    p, g = _as_float64(pred), _as_float64(gt)
    if p.shape != g.shape:
        raise ValueError(
            f"prediction shape {tuple(p.shape)} does not match ground-truth shape {tuple(g.shape)}"
        )
    if p.ndim != 3:
        raise ValueError(f"expected 3-D cubes (H x W x B), got shape {tuple(p.shape)}")
    for name, cube in (("prediction", p), ("ground truth", g)):
        bad = int(torch.isnan(cube).sum())
        if bad:
            raise ValueError(f"the {name} contains {bad} NaN values")
    p, g = central_crop(p, crop, channel_axis), central_crop(g, crop, channel_axis)
    result = {
        "mrae": mrae(p, g, channel_axis=channel_axis),
        "rmse": rmse(p, g),
        "psnr": psnr(p, g),
        "sam": sam(p, g, channel_axis=channel_axis),
    }
    if with_ssim:
        result["ssim"] = ssim(p, g, channel_axis=channel_axis)
    return result


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average per-image metric dicts key by key (a key missing from some rows is averaged over the rest).

    PSNR is infinite for a perfect image, which would swamp the mean: infinite values are left out of the
    average (the mean of the finite ones is reported), and the result is inf only when every value is inf.
    """
    if not rows:
        raise ValueError("cannot average an empty list of metric rows")
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    out: dict[str, float] = {}
    for key in keys:
        values = [float(row[key]) for row in rows if key in row]
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            out[key] = sum(finite) / len(finite)
        else:
            out[key] = values[0] if len(set(values)) == 1 else math.nan
    return out


# ------------------------------------------------------------------------------------------------ table
_FORMATS = {"mrae": "{:.4f}", "rmse": "{:.4f}", "psnr": "{:.2f}", "sam": "{:.2f}", "ssim": "{:.4f}"}


def _format_value(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return _FORMATS.get(key, "{:.4g}").format(value)


def format_table(rows: Mapping[str, Mapping[str, float]], first_column: str = "scene", mean_row: bool = True) -> str:
    """A plain-text table, one line per row (scenes, or models when comparing) plus a "mean" line if asked:
    MRAE RMSE PSNR SAM, then any other keys."""
    keys = list(METRIC_KEYS)
    for row in rows.values():
        keys.extend(k for k in row if k not in keys)
    lines = [[first_column, *(k.upper() for k in keys)]]
    for name, row in rows.items():
        lines.append([str(name), *(_format_value(k, row.get(k)) for k in keys)])
    if rows and mean_row:
        mean = mean_metrics(list(rows.values()))
        lines.append(["mean", *(_format_value(k, mean.get(k)) for k in keys)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(keys) + 1)]

    def render(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])

    rule = "-" * len(render(lines[0]))
    body = [render(line) for line in lines[1:]]
    if rows and mean_row:
        body.insert(len(body) - 1, rule)
    return "\n".join([render(lines[0]), rule, *body])
