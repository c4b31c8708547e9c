"""Physical spectra: the closest to a model's estimate that render to the input RGB, non-negative and at most 1.

A model's estimate ŝ of a pixel's spectrum may dip below zero or rise above one even where spectra exist that
are non-negative, at most 1 (as reflectances are) and render exactly to the pixel's RGB c. `FeasibleProjection`
returns, per pixel, the spectrum closest to ŝ (in L2) in

    F_u(c) = {s : Φ s = c, 0 <= s <= u},   u = 1 where F_1(c) is not empty, else 1.001 γ(c) at most
                                            `max_value`, γ(c) the smallest bound with F not empty (the gauge).

So a highlight brighter than the camera's white in some channel keeps its RGB with bands above 1 (up to
`max_value`) instead of losing its colour. Where even F_max_value(c) is empty (c is outside the camera's gamut:
no spectrum of that range renders to it), the pixel gets the spectrum in [0, max_value] with the least RGB change
|Φ s − c| (the closest to ŝ among those) and is flagged as out of gamut.

Gamut. Φ maps the box [0, 1]^B onto a zonotope Z (the sum of the segments [0, φ_b] of Φ's columns), whose facets'
normals are the cross products of pairs of columns; with σ(n) = Σ_b max(0, n·φ_b) its support function,
c ∈ u Z exactly when n·c <= u σ(n) for every such normal n and its opposite.

Projection. The dual of min ½|s − ŝ|² + 1/(2ε) |Φ s − c|² over the box is a concave function of λ ∈ R³ whose
maximiser gives s(λ) = clip(ŝ + Φᵀλ, 0, u). Its gradient c − Φ s(λ) − ελ is piecewise linear, and semi-smooth
Newton steps with J = Φ D Φᵀ + εI (D: the bands strictly inside the box), each a full step or, where it
overshoots a kink, the exact line search along it, find the root in a few iterations. In gamut ε = 0 (the
projection proper; a 1e-12 ridge keeps J invertible when few bands are free); out of gamut ε falls from 1e-4 to
1e-8, each stage starting from the last (λ ~ RGB change / ε), towards the least-RGB-change limit. The start is
the linear projection onto Φs = c, which is the answer wherever it lies in the box. Estimates already in [0, 1]
and exact in RGB are left untouched; the rest is solved in float64: on the CPU one pixel at a time by compiled code
(`uldm.feasibility_kernel`, the same steps), on other devices batched in torch.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator, Union

import numpy as np
import torch

from . import feasibility_kernel
from .camera import CameraResponse

MAX_VALUE = 2.0  # the most a band may reach where the RGB needs more than 1: twice the camera's white
EXACT = 1e-6  # |Φŝ − c| below which an estimate inside the box is left as it is
CHUNK_PIXELS = 1 << 16  # pixels solved together in float64 (about 16 MB per B-band tensor)
GAUGE_PIXELS = 1024  # pixels whose gauge is computed at once
_BOUND_MARGIN = 1e-3  # room above a pixel's gauge in its bound, so its feasible set is not a single point
_GAUGE_SLACK = 1e-12  # a gauge this far above a bound is rounding: white (1, 1, 1) is in [0, 1]'s gamut
_TOLERANCE = 1e-11  # in gamut, the Newton iteration stops when |c − Φs| is below this
_RIDGE = 1e-12  # added to J in gamut, where the penalty is 0: J is singular when fewer than 3 bands are free
_CONTINUATION = (1e-4, 1e-8)  # out of gamut: the penalty lowered in stages
_MAX_ITERATIONS = 100


class FeasibleProjection:
    """The projection onto F_u(c) for one camera (see the module docstring); `__call__` on tensors of any shape."""

    def __init__(self, camera: Union[CameraResponse, np.ndarray], max_value: float = MAX_VALUE,
                 compiled: bool = True) -> None:
        """`compiled`: on the CPU, solve with `uldm.feasibility_kernel` (the same algorithm, several times faster)
        where numba is installed; else, and on other devices, the batched torch solve."""
        matrix = np.asarray(camera.matrix if isinstance(camera, CameraResponse) else camera, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != 3:
            raise ValueError(f"the camera response must be 3 x B, got shape {matrix.shape}")
        if not max_value >= 1:
            raise ValueError(f"max_value must be at least 1 (the camera's white), got {max_value}")
        self.max_value = float(max_value)
        self.compiled = compiled and feasibility_kernel.AVAILABLE
        self.response = torch.from_numpy(matrix.copy())
        self.response_columns = np.ascontiguousarray(matrix.T)  # B x 3, the layout the compiled solve reads
        self.gram_inverse = torch.linalg.inv(self.response @ self.response.T)
        # J's six distinct entries are one matmul of the free-band indicator with these column products
        self.pair_products = torch.stack([self.response[i] * self.response[j]
                                          for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))], dim=1)
        normals = np.array([np.cross(matrix[:, i], matrix[:, j])
                            for i, j in itertools.combinations(range(matrix.shape[1]), 2)])
        lengths = np.linalg.norm(normals, axis=1, keepdims=True)
        kept = lengths[:, 0] > 1e-12 * lengths.max()  # parallel columns span no facet
        normals = normals[kept] / lengths[kept]
        normals = np.concatenate([normals, -normals])
        support = np.maximum(normals @ matrix, 0).sum(axis=1)  # σ(n) of the zonotope Z
        # c ∈ u Z  <=>  n·c <= u σ(n) for every n  <=>  max_n n·c / σ(n) <= u; σ = 0 on the cone's own facets
        self.scaled_normals = torch.from_numpy((normals / np.maximum(support, 1e-15)[:, None]).T.copy())
        self._on_device: dict = {}

    @property
    def num_bands(self) -> int:
        return self.response.shape[1]

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The float64 matrices, copied to `device` once."""
        if device not in self._on_device:
            self._on_device[device] = tuple(x.to(device) for x in (
                self.response, self.gram_inverse, self.pair_products, self.scaled_normals,
                self.scaled_normals.float()))
        return self._on_device[device]

    # --------------------------------------------------------------------------------------------- public
    def __call__(self, spectra: torch.Tensor, rgb: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """(feasible spectra in the dtype of `spectra`, out-of-gamut mask) for spectra (B along `dim`) and linear
        RGB (3 along `dim`) of the same other shape; the mask has that shape without `dim`."""
        if spectra.shape[dim] != self.num_bands or rgb.shape[dim] != 3:
            raise ValueError(f"expected {self.num_bands} bands and 3 RGB channels along dim {dim}, got shapes "
                             f"{tuple(spectra.shape)} and {tuple(rgb.shape)}")
        flat_spectra = torch.movedim(spectra, dim, -1)
        flat_rgb = torch.movedim(rgb, dim, -1)
        if flat_spectra.shape[:-1] != flat_rgb.shape[:-1]:
            raise ValueError(f"spectra {tuple(spectra.shape)} and RGB {tuple(rgb.shape)} differ in their pixels")
        shape = flat_spectra.shape[:-1]
        result = flat_spectra.reshape(-1, self.num_bands)
        if result.untyped_storage().data_ptr() == spectra.untyped_storage().data_ptr():
            result = result.clone()  # a view of the input: the input stays as it is
        flat_rgb = flat_rgb.reshape(-1, 3)
        mask = torch.zeros(len(flat_rgb), dtype=torch.bool, device=flat_rgb.device)
        for start in range(0, len(flat_rgb), CHUNK_PIXELS):
            part = slice(start, start + CHUNK_PIXELS)
            mask[part] = self.project_pixels_(result[part], flat_rgb[part])
        return torch.movedim(result.reshape(*shape, self.num_bands), -1, dim), mask.reshape(shape)

    def project_pixels_(self, spectra: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """Project P x B estimates against P x 3 RGB in place; returns the P out-of-gamut flags. Estimates already
        in [0, 1] that render to their RGB within `EXACT` stay exactly as they are."""
        if self.compiled and spectra.device.type == "cpu" and spectra.dtype in (torch.float32, torch.float64):
            return self._project_compiled_(spectra, rgb)
        response = self._constants(rgb.device)[0].to(spectra.dtype)
        residual = rgb.to(spectra.dtype) - spectra @ response.T
        inside = (spectra >= 0).all(dim=1) & (spectra <= 1).all(dim=1) & (residual.abs() <= EXACT).all(dim=1)
        mask = torch.zeros(len(spectra), dtype=torch.bool, device=spectra.device)
        todo = (~inside).nonzero().squeeze(1)
        if len(todo):
            with one_cpu_thread(spectra.device):
                solved, mask[todo] = self._solve(spectra[todo].double(), rgb[todo].double())
            spectra[todo] = solved.to(spectra.dtype)
        return mask

    def _project_compiled_(self, spectra: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """`project_pixels_` by the compiled CPU solve: the linear projection decides most pixels (one landing in
        [0, 1] is the answer, and its colour is then within the camera's white, so no gauge is needed); the gauge
        and the Newton solve only for the rest."""
        response, gram_inverse = self.response_columns, self.gram_inverse.numpy()
        values, colours = spectra.detach().numpy(), rgb.detach().to(spectra.dtype).numpy()  # written in place
        pending = feasibility_kernel.project_linear_(values, colours, response, gram_inverse, EXACT)
        mask = torch.zeros(len(spectra), dtype=torch.bool)
        if len(pending):
            rows = torch.from_numpy(pending)
            gauge = self.gauge(rgb[rows])
            out_of_gamut = gauge > self.max_value * (1 + _GAUGE_SLACK)
            solved = feasibility_kernel.solve_pixels(
                values[pending].astype(np.float64), colours[pending].astype(np.float64),
                upper_bound(gauge, self.max_value).numpy(), out_of_gamut.numpy(), response, gram_inverse,
                np.array(_CONTINUATION), _TOLERANCE, _RIDGE, _MAX_ITERATIONS)
            spectra[rows] = torch.from_numpy(solved).to(spectra.dtype)
            mask[rows] = out_of_gamut
        return mask

    def gauge(self, rgb: torch.Tensor) -> torch.Tensor:
        """γ(c) = min {u : c ∈ u Z} of each row of `rgb` (P x 3): the smallest bound u for which some spectrum in
        [0, u] renders to c (huge outside the cone of non-negative spectra). In float32, `GAUGE_PIXELS` at a
        time (which keeps the P x facets products in cache), then in float64 where γ is near 1 or `max_value`,
        the bounds that decide."""
        scaled_normals, scaled_normals32 = self._constants(rgb.device)[3:]
        single = rgb.float()
        gauge = torch.cat([(single[start:start + GAUGE_PIXELS] @ scaled_normals32).amax(dim=1)
                           for start in range(0, len(rgb), GAUGE_PIXELS)]).to(torch.float64)
        near = ((gauge - 1).abs() < 1e-4) | ((gauge - self.max_value).abs() < 1e-4 * self.max_value)
        if near.any():
            gauge[near] = (rgb[near].double() @ scaled_normals).amax(dim=1)
        return gauge

    # --------------------------------------------------------------------------------------------- solve
    def _solve(self, estimate: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 estimates (P x B) and RGB (P x 3) -> (projections, out-of-gamut flags)."""
        response, gram_inverse = self._constants(rgb.device)[:2]
        gauge = self.gauge(rgb)
        upper = upper_bound(gauge, self.max_value).to(rgb.dtype).unsqueeze(1)
        out_of_gamut = gauge > self.max_value * (1 + _GAUGE_SLACK)
        # start from the linear projection onto Φs = c: the answer wherever it lands inside the box
        multipliers = (rgb - estimate @ response.T) @ gram_inverse
        spectra = torch.addmm(estimate, multipliers, response)
        outside = ((spectra < 0) | (spectra > upper)).any(dim=1)
        for pending, penalties in (((outside & ~out_of_gamut).nonzero().squeeze(1), (0.0,)),
                                   (out_of_gamut.nonzero().squeeze(1), _CONTINUATION)):
            if not len(pending):
                continue
            lam = multipliers[pending]
            previous = penalties[0]
            for penalty in penalties:  # out of gamut λ ~ |RGB change| / ε: each stage starts where the last ended
                lam = self._newton(estimate[pending], rgb[pending], lam * (previous / penalty if penalty else 1),
                                   upper[pending], penalty)
                previous = penalty
            z = torch.addmm(estimate[pending], lam, response)
            spectra[pending] = z.clamp(min=0).minimum(upper[pending])
        return spectra, out_of_gamut

    def _newton(self, estimate: torch.Tensor, rgb: torch.Tensor, multipliers: torch.Tensor, upper: torch.Tensor,
                penalty: float) -> torch.Tensor:
        """The dual maximiser λ (P x 3) by semi-smooth Newton, each pixel until its gradient c − Φs(λ) − ελ is
        below tolerance (ε = `penalty`; 0 in gamut, where J gets a tiny ridge). A full step is taken where the
        dual still rises at its end; where it overshoots a kink, the exact line search (`exact_step`) instead."""
        response, _, pair_products = self._constants(rgb.device)[:3]
        ridge = (penalty or _RIDGE) * torch.eye(3, dtype=rgb.dtype, device=rgb.device)

        def gradient_at(lam, z, target, top):
            return target - z.clamp(min=0).minimum(top) @ response.T - penalty * lam

        result = multipliers.clone()
        active = torch.arange(len(rgb), device=rgb.device)
        lam, est, target, top = multipliers, estimate, rgb, upper
        z = torch.addmm(est, lam, response)
        gradient = gradient_at(lam, z, target, top)
        for _ in range(_MAX_ITERATIONS):
            # out of gamut, to a millionth of the RGB change ε|λ| (float64 cannot resolve much less at |λ| ~ 1e7)
            going = gradient.abs().amax(dim=1) > _TOLERANCE + 1e-6 * penalty * lam.abs().amax(dim=1)
            if not going.all():
                result[active] = lam
                active, lam, est, target, top, z, gradient = (
                    x[going] for x in (active, lam, est, target, top, z, gradient))
                if not len(active):
                    return result
            free = ((z > 0) & (z < top)).to(rgb.dtype)
            step = torch.linalg.solve(symmetric_3x3(free @ pair_products) + ridge, gradient.unsqueeze(-1)).squeeze(-1)
            moves = step @ response
            lam_next, z_next = lam + step, z + moves
            gradient_next = gradient_at(lam_next, z_next, target, top)
            over = ((gradient_next * step).sum(dim=1) < 0).nonzero().squeeze(1)
            if len(over):
                t = exact_step(z[over], moves[over], top[over], (gradient[over] * step[over]).sum(dim=1),
                               penalty * step[over].square().sum(dim=1)).unsqueeze(1)
                lam_next[over] = lam[over] + t * step[over]
                z_next[over] = z[over] + t * moves[over]
                gradient_next[over] = gradient_at(lam_next[over], z_next[over], target[over], top[over])
            lam, z, gradient = lam_next, z_next, gradient_next
        result[active] = lam
        return result


def upper_bound(gauge: torch.Tensor, max_value: float) -> torch.Tensor:
    """Each pixel's bound on its bands: 1 (a reflectance) where the RGB allows it, else the smallest bound that
    admits a spectrum (its gauge) with `_BOUND_MARGIN` of room, at most `max_value`. So the bound grows with the
    colour beyond the camera's white instead of jumping from 1 to `max_value` there (which moved a spectrum by up
    to 1 for an RGB change of 1e-4); a colour at the white keeps the flat white, the only spectrum in [0, 1] it has."""
    return torch.where(gauge <= 1 + _GAUGE_SLACK, torch.ones_like(gauge),
                       (gauge * (1 + _BOUND_MARGIN)).clamp(1.0, max_value))


def exact_step(z: torch.Tensor, moves: torch.Tensor, upper: torch.Tensor, slope: torch.Tensor,
               curvature: torch.Tensor) -> torch.Tensor:
    """The exact line search of a Newton step that overshoots: the t in (0, 1) where the dual stops rising.

    Along λ + t·d the bands move as z + t·w (`moves`: w = Φᵀd) and the dual's derivative is
    φ'(t) = slope − curvature·t − Σ_b w_b (clip(z_b + t w_b, 0, u) − clip(z_b, 0, u)): continuous, piecewise
    linear and non-increasing, its slope changing by ∓w_b² where band b enters or leaves the box. With
    φ'(0) = slope > 0 > φ'(1), the root is in the first segment between sorted kinks where φ' turns negative.
    """
    count = len(z)
    w2 = moves.square()
    safe = torch.where(moves == 0, torch.ones_like(moves), moves)
    to_zero, to_upper = -z / safe, (upper - z) / safe
    still, inside = moves == 0, (z > 0) & (z < upper)
    enter = torch.where(still, torch.where(inside, -torch.inf, torch.inf), torch.where(moves > 0, to_zero, to_upper))
    leave = torch.where(still, torch.inf, torch.where(moves > 0, to_upper, to_zero))  # free while enter < t < leave
    start_slope = -curvature - (w2 * ((enter <= 0) & (leave > 0))).sum(dim=1)
    ones = torch.ones(count, 1, dtype=z.dtype, device=z.device)
    times = torch.cat([enter, leave, ones], dim=1)  # t = 1 last: the root is before it
    changes = torch.cat([-w2, w2, 0 * ones], dim=1)
    changes = torch.where(times > 0, changes, torch.zeros_like(changes))  # kinks at t <= 0 are in start_slope
    times, order = times.clamp(0, 1).sort(dim=1, stable=True)
    changes = changes.gather(1, order)
    slopes = start_slope.unsqueeze(1) + torch.cumsum(changes, dim=1) - changes  # of the segment ending at each kink
    derivative = slope.unsqueeze(1) + torch.cumsum(slopes * torch.diff(times, dim=1, prepend=0 * ones), dim=1)
    crossed = derivative <= 0
    crossed[:, -1] = True  # φ'(1) < 0, whatever the rounding of the sum says
    first = crossed.to(torch.int8).argmax(dim=1, keepdim=True)
    before = (first - 1).clamp(min=0)
    start_time = torch.where(first > 0, times.gather(1, before), 0 * ones)
    start_value = torch.where(first > 0, derivative.gather(1, before), slope.unsqueeze(1))
    root = start_time + start_value / (-slopes.gather(1, first)).clamp(min=1e-300)
    return torch.minimum(root, times.gather(1, first)).squeeze(1)


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, one intra-op thread for the block: the solve is many small operations on a few thousand pixels,
    which a second thread does not speed up, and on a busy machine its synchronisation made them 8x slower."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def symmetric_3x3(entries: torch.Tensor) -> torch.Tensor:
    """P x 6 entries (00, 01, 02, 11, 12, 22) -> P x 3 x 3 symmetric matrices."""
    a, b, c, d, e, f = entries.unbind(dim=1)
    return torch.stack([a, b, c, b, d, e, c, e, f], dim=1).reshape(-1, 3, 3)


_PROJECTIONS: dict = {}


def projection_for(camera: CameraResponse, max_value: float = MAX_VALUE) -> FeasibleProjection:
    """One `FeasibleProjection` per camera response and bound, built once (its gamut's facets take a moment)."""
    key = (np.asarray(camera.matrix).tobytes(), float(max_value))
    if key not in _PROJECTIONS:
        _PROJECTIONS[key] = FeasibleProjection(camera, max_value)
    return _PROJECTIONS[key]


def project_feasible(spectra: torch.Tensor, rgb: torch.Tensor, camera: CameraResponse, dim: int = -1,
                     max_value: float = MAX_VALUE) -> tuple[torch.Tensor, torch.Tensor]:
    """(feasible spectra, out-of-gamut mask): `FeasibleProjection` of `camera`, for spectra and RGB with their
    channels along `dim`."""
    return projection_for(camera, max_value)(spectra, rgb, dim=dim)


__all__ = ["MAX_VALUE", "FeasibleProjection", "project_feasible", "projection_for", "symmetric_3x3"]
