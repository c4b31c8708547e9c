"""The feasible projection's solve compiled for the CPU: `uldm.feasibility`'s algorithm one pixel at a time.

The batched torch solve (`FeasibleProjection._solve`) runs each Newton iteration as some twenty passes over
P x B float64 tensors, so on a CPU it is bound by memory traffic (about 3 µs per pixel on one core). Here each
pixel's 31 bands, its 3-vector λ and its 3 x 3 system stay in registers: the same iterations (start at the linear
projection onto Φs = c; semi-smooth Newton on the dual, a full step or the exact line search where it overshoots;
out of gamut, the penalty lowered in stages) at a fraction of the cost. Compiled by numba once per machine (the
compiled code is cached beside this file); the torch solve stays for other devices and where numba is missing.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; a broken install falls back to torch
    numba = None

AVAILABLE = numba is not None


def _jit(function):
    """numba's compiled version of `function`, kept in its on-disk cache; without numba, `function` itself."""
    return numba.njit(cache=True, nogil=True, fastmath=False)(function) if AVAILABLE else function


@_jit
def _dual_gradient(estimate, lam0, lam1, lam2, rgb, upper, response, penalty, z):
    """z = ŝ + Φᵀλ (written into `z`) and the dual's gradient c − Φ clip(z, 0, u) − ελ (returned, 3 scalars)."""
    g0, g1, g2 = rgb[0] - penalty * lam0, rgb[1] - penalty * lam1, rgb[2] - penalty * lam2
    for b in range(estimate.shape[0]):
        r0, r1, r2 = response[b, 0], response[b, 1], response[b, 2]
        value = estimate[b] + lam0 * r0 + lam1 * r1 + lam2 * r2
        z[b] = value
        s = min(max(value, 0.0), upper)
        g0 -= r0 * s
        g1 -= r1 * s
        g2 -= r2 * s
    return g0, g1, g2


@_jit
def _line_derivative(t, z, moves, upper, slope, curvature):
    """φ'(t) along a Newton step (see `uldm.feasibility.exact_step`)."""
    value = slope - curvature * t
    for b in range(z.shape[0]):
        value -= moves[b] * (min(max(z[b] + t * moves[b], 0.0), upper) - min(max(z[b], 0.0), upper))
    return value


@_jit
def _exact_step(z, moves, upper, slope, curvature, kinks):
    """The t in (0, 1) where the dual stops rising along the step: φ' is piecewise linear and non-increasing, so
    walk its kinks in order and interpolate inside the segment where it turns negative."""
    count = 0
    for b in range(z.shape[0]):
        if moves[b] != 0.0:
            for edge in (0.0, upper):
                t = (edge - z[b]) / moves[b]
                if 0.0 < t < 1.0:
                    kinks[count] = t
                    count += 1
    for k in range(1, count):  # insertion sort: a step crosses few kinks
        t, j = kinks[k], k - 1
        while j >= 0 and kinks[j] > t:
            kinks[j + 1] = kinks[j]
            j -= 1
        kinks[j + 1] = t
    kinks[count] = 1.0
    before_t, before_value = 0.0, slope
    for k in range(count + 1):
        t = kinks[k]
        value = _line_derivative(t, z, moves, upper, slope, curvature)
        if k == count:
            value = min(value, 0.0)  # φ'(1) < 0, whatever the rounding of the sum says
        if value <= 0.0:
            drop = before_value - value
            return before_t + before_value * (t - before_t) / drop if drop > 0.0 else t
        before_t, before_value = t, value
    return 1.0


@_jit
def _solve_3x3(a00, a01, a02, a11, a12, a22, r0, r1, r2):
    """J⁻¹ r for a symmetric positive definite 3 x 3 J (it has a ridge added), by its Cholesky factor."""
    l00 = np.sqrt(a00)
    l10, l20 = a01 / l00, a02 / l00
    l11 = np.sqrt(a11 - l10 * l10)
    l21 = (a12 - l20 * l10) / l11
    l22 = np.sqrt(a22 - l20 * l20 - l21 * l21)
    y0 = r0 / l00
    y1 = (r1 - l10 * y0) / l11
    y2 = (r2 - l20 * y0 - l21 * y1) / l22
    x2 = y2 / l22
    x1 = (y1 - l21 * x2) / l11
    return (y0 - l10 * x1 - l20 * x2) / l00, x1, x2


@_jit
def _newton(estimate, rgb, lam, upper, response, penalty, tolerance, ridge, max_iterations, z, moves, z_next,
            kinks):
    """The dual maximiser λ of one pixel (`lam`, updated in place), as `FeasibleProjection._newton`."""
    bands = estimate.shape[0]
    lam0, lam1, lam2 = lam[0], lam[1], lam[2]
    g0, g1, g2 = _dual_gradient(estimate, lam0, lam1, lam2, rgb, upper, response, penalty, z)
    diagonal = penalty if penalty > 0.0 else ridge
    for _ in range(max_iterations):
        if max(abs(g0), abs(g1), abs(g2)) <= tolerance + 1e-6 * penalty * max(abs(lam0), abs(lam1), abs(lam2)):
            break
        a00 = a01 = a02 = a11 = a12 = a22 = 0.0
        for b in range(bands):
            if 0.0 < z[b] < upper:
                r0, r1, r2 = response[b, 0], response[b, 1], response[b, 2]
                a00 += r0 * r0
                a01 += r0 * r1
                a02 += r0 * r2
                a11 += r1 * r1
                a12 += r1 * r2
                a22 += r2 * r2
        d0, d1, d2 = _solve_3x3(a00 + diagonal, a01, a02, a11 + diagonal, a12, a22 + diagonal, g0, g1, g2)
        for b in range(bands):
            moves[b] = d0 * response[b, 0] + d1 * response[b, 1] + d2 * response[b, 2]
        n0, n1, n2 = _dual_gradient(estimate, lam0 + d0, lam1 + d1, lam2 + d2, rgb, upper, response, penalty, z_next)
        if n0 * d0 + n1 * d1 + n2 * d2 < 0.0:  # the full step overshoots a kink: the exact line search
            t = _exact_step(z, moves, upper, g0 * d0 + g1 * d1 + g2 * d2, penalty * (d0 * d0 + d1 * d1 + d2 * d2),
                            kinks)
            d0, d1, d2 = t * d0, t * d1, t * d2
            n0, n1, n2 = _dual_gradient(estimate, lam0 + d0, lam1 + d1, lam2 + d2, rgb, upper, response, penalty,
                                        z_next)
        lam0, lam1, lam2 = lam0 + d0, lam1 + d1, lam2 + d2
        g0, g1, g2 = n0, n1, n2
        z[:] = z_next
    lam[0], lam[1], lam[2] = lam0, lam1, lam2


@_jit
def project_linear_(spectra, rgb, response, gram_inverse, exact):
    """In place, the pixels that the linear projection onto Φs = c decides: an estimate in [0, 1] within `exact`
    of its RGB stays as it is; one whose projection lands in [0, 1] gets it (in [0, 1], the colour is within the
    camera's white, so its bound is 1). Returns the indices of the others, for `solve_pixels`."""
    count, bands = spectra.shape
    pending = np.empty(count, np.int64)
    projected = np.empty(bands)
    todo = 0
    for p in range(count):
        e0, e1, e2 = float(rgb[p, 0]), float(rgb[p, 1]), float(rgb[p, 2])
        boxed = True
        for b in range(bands):
            value = float(spectra[p, b])
            e0 -= response[b, 0] * value
            e1 -= response[b, 1] * value
            e2 -= response[b, 2] * value
            boxed = boxed and 0.0 <= value <= 1.0
        if boxed and max(abs(e0), abs(e1), abs(e2)) <= exact:
            continue
        lam0 = gram_inverse[0, 0] * e0 + gram_inverse[0, 1] * e1 + gram_inverse[0, 2] * e2
        lam1 = gram_inverse[1, 0] * e0 + gram_inverse[1, 1] * e1 + gram_inverse[1, 2] * e2
        lam2 = gram_inverse[2, 0] * e0 + gram_inverse[2, 1] * e1 + gram_inverse[2, 2] * e2
        boxed = True
        for b in range(bands):
            value = spectra[p, b] + lam0 * response[b, 0] + lam1 * response[b, 1] + lam2 * response[b, 2]
            projected[b] = value
            boxed = boxed and 0.0 <= value <= 1.0
        if boxed:
            for b in range(bands):
                spectra[p, b] = projected[b]
        else:
            pending[todo] = p
            todo += 1
    return pending[:todo]


@_jit
def solve_pixels(estimate, rgb, upper, out_of_gamut, response, gram_inverse, continuation, tolerance, ridge,
                 max_iterations):
    """float64 estimates (P x B), RGB (P x 3), bounds (P), out-of-gamut flags (P), the camera's B x 3 response
    (Φᵀ) and (ΦΦᵀ)⁻¹ -> the P x B projections."""
    count, bands = estimate.shape
    result = np.empty_like(estimate)
    lam = np.empty(3)
    z, moves, z_next, kinks = np.empty(bands), np.empty(bands), np.empty(bands), np.empty(2 * bands + 1)
    in_gamut = np.zeros(1)
    for p in range(count):
        e0, e1, e2 = rgb[p, 0], rgb[p, 1], rgb[p, 2]
        for b in range(bands):
            e0 -= response[b, 0] * estimate[p, b]
            e1 -= response[b, 1] * estimate[p, b]
            e2 -= response[b, 2] * estimate[p, b]
        for i in range(3):
            lam[i] = gram_inverse[i, 0] * e0 + gram_inverse[i, 1] * e1 + gram_inverse[i, 2] * e2
        inside = not out_of_gamut[p]
        for b in range(bands):
            value = estimate[p, b] + lam[0] * response[b, 0] + lam[1] * response[b, 1] + lam[2] * response[b, 2]
            result[p, b] = value
            inside = inside and 0.0 <= value <= upper[p]
        if inside:  # the linear projection lands in the box: it is the answer
            continue
        penalties = continuation if out_of_gamut[p] else in_gamut
        previous = penalties[0]
        for penalty in penalties:  # out of gamut λ ~ |RGB change| / ε: each stage starts where the last ended
            if penalty > 0.0:
                lam *= previous / penalty
            _newton(estimate[p], rgb[p], lam, upper[p], response, penalty, tolerance, ridge, max_iterations, z,
                    moves, z_next, kinks)
            previous = penalty
        for b in range(bands):
            value = estimate[p, b] + lam[0] * response[b, 0] + lam[1] * response[b, 1] + lam[2] * response[b, 2]
            result[p, b] = min(max(value, 0.0), upper[p])
    return result


def warm_up() -> None:
    """Compile the kernels for float32 and float64 estimates into numba's cache (scripts/setup.sh does, once per
    install), so that a first reconstruction does not wait for the compiler."""
    if not AVAILABLE:
        return
    response, gram_inverse = np.ones((31, 3)), np.eye(3)
    for dtype in (np.float32, np.float64):
        project_linear_(np.zeros((1, 31), dtype), np.zeros((1, 3), dtype), response, gram_inverse, 1e-6)
    solve_pixels(np.zeros((1, 31)), np.zeros((1, 3)), np.ones(1), np.zeros(1, np.bool_), response, gram_inverse,
                 np.array([1e-4, 1e-8]), 1e-11, 1e-12, 100)


__all__ = ["AVAILABLE", "project_linear_", "solve_pixels", "warm_up"]
