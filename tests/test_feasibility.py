"""Physical spectra (`uldm.feasibility`): exact in RGB and in [0, 1] where the RGB allows it, least RGB change and a
flag where it does not; checked against an independent bounded least-squares solver (scipy's lsq_linear). Every
test runs with both solves: the compiled CPU one (`uldm.feasibility_kernel`) and the batched torch one."""

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

from uldm import CameraResponse, feasibility, feasibility_kernel
from uldm.feasibility import MAX_VALUE, FeasibleProjection, project_feasible

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True, params=["compiled", "torch"])
def solve(request, monkeypatch):
    """Which solve the test's projections use: the torch one where numba is taken away."""
    if request.param == "torch":
        monkeypatch.setattr(feasibility_kernel, "AVAILABLE", False)
    monkeypatch.setattr(feasibility, "_PROJECTIONS", {})
    return request.param

CAMERA = CameraResponse.from_preset("nikon5100")
PHI = CAMERA.matrix
PURE_SRGB_PRIMARIES = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]  # linear sRGB of 255, 0, 0 and so on


def smooth_spectra(count: int, seed: int = 0) -> np.ndarray:
    """Reflectance-like spectra in [0, 1]: a few random Gaussian bumps on a base level."""
    rng = np.random.default_rng(seed)
    bands = np.linspace(0, 1, PHI.shape[1])
    spectra = rng.uniform(0.05, 0.3, (count, 1)) + sum(
        rng.uniform(0, 0.5, (count, 1)) * np.exp(-((bands - rng.random((count, 1))) / 0.15) ** 2) for _ in range(3))
    return np.clip(spectra, 0, 1)


def noisy_estimates(truth: np.ndarray, seed: int = 1) -> np.ndarray:
    """What a model might say: the truth plus smooth errors that push bands below 0 and above 1."""
    rng = np.random.default_rng(seed)
    return truth + rng.normal(0, 0.25, (len(truth), 1)) * np.sin(np.linspace(0, 6, PHI.shape[1]) + rng.random((len(truth), 1)) * 6)


def reference_projection(estimate: np.ndarray, rgb: np.ndarray, upper: float, weight: float = 1e5) -> np.ndarray:
    """The closest spectrum to `estimate` in [0, upper] with Φs = c (or, without one, the least |Φs − c|), by an
    independent solver: bounded least squares on [I; w Φ] s = [ŝ; w c] with a heavy weight w on the RGB rows."""
    system = np.vstack([np.eye(PHI.shape[1]), weight * PHI])
    return lsq_linear(system, np.concatenate([estimate, weight * rgb]), bounds=(0, upper), method="bvls",
                      tol=1e-14).x


def least_rgb_change(rgb: np.ndarray, upper: float) -> float:
    """min over s in [0, upper] of max |Φs − c| is at most this L2 minimum: the gamut's distance from c."""
    return float(np.linalg.norm(PHI @ lsq_linear(PHI, rgb, bounds=(0, upper), method="bvls", tol=1e-14).x - rgb))


def project(estimate, rgb):
    spectra, mask = project_feasible(torch.as_tensor(estimate), torch.as_tensor(rgb), CAMERA)
    return spectra.numpy(), mask.numpy()


# ------------------------------------------------------------------------------------------------- in gamut
def test_in_gamut_pixels_become_exact_in_rgb_and_lie_in_0_1():
    truth = smooth_spectra(400)
    rgb = (truth @ PHI.T).astype(np.float32)
    estimate = noisy_estimates(truth).astype(np.float32)
    assert (estimate < -0.05).any(axis=1).mean() > 0.1 and (estimate > 1.05).any()  # the test has work to do
    spectra, mask = project(estimate, rgb)
    assert spectra.dtype == np.float32 and not mask.any()
    assert spectra.min() >= 0 and spectra.max() <= 1
    assert np.abs(spectra.astype(np.float64) @ PHI.T - rgb).max() <= 1e-5


def test_the_projection_is_the_closest_feasible_spectrum():
    truth = smooth_spectra(12, seed=3)
    rgb = truth @ PHI.T
    estimate = noisy_estimates(truth, seed=4)
    spectra, _ = project(estimate, rgb)  # float64 in, float64 out
    for row in range(len(truth)):
        reference = reference_projection(estimate[row], rgb[row], 1.0)
        assert np.linalg.norm(spectra[row] - estimate[row]) <= np.linalg.norm(reference - estimate[row]) + 1e-6
        np.testing.assert_allclose(spectra[row], reference, atol=1e-3)


def test_the_compiled_and_the_torch_solves_agree(solve):
    if solve == "torch":
        pytest.skip("compares the two solves once")
    truth = smooth_spectra(3000, seed=7)
    rgb = truth @ PHI.T
    rgb[:500] *= np.linspace(1.0, 3.0, 500)[:, None]  # beyond the white, up to outside the bound
    rgb[500:600] = np.random.default_rng(8).random((100, 3))  # many out of the gamut
    estimate = noisy_estimates(truth, seed=9)
    compiled, torch_solve = FeasibleProjection(CAMERA), FeasibleProjection(CAMERA, compiled=False)
    assert compiled.compiled and not torch_solve.compiled
    (a, mask_a), (b, mask_b) = (p(torch.from_numpy(estimate), torch.from_numpy(rgb)) for p in (compiled, torch_solve))
    assert mask_a.any() and torch.equal(mask_a, mask_b)
    assert (a - b).abs().max() <= 1e-7
    assert (a @ torch.tensor(PHI).T - torch.from_numpy(rgb))[~mask_a].abs().max() <= 1e-9


def test_estimates_that_are_already_physical_are_returned_bit_for_bit():
    truth = smooth_spectra(50).astype(np.float32)
    rgb = (truth.astype(np.float64) @ PHI.T).astype(np.float32)
    spectra, mask = project(truth, rgb)
    np.testing.assert_array_equal(spectra, truth)
    assert not mask.any()


def test_an_estimate_that_disagrees_with_the_rgb_is_made_consistent():
    truth = smooth_spectra(30, seed=5)
    rgb = truth @ PHI.T
    spectra, mask = project(truth * 0.7 + 0.1, rgb)  # in [0, 1], but renders to another colour
    assert not mask.any() and np.abs(spectra @ PHI.T - rgb).max() <= 1e-9


# --------------------------------------------------------------------------------------- highlights, gamut
def test_a_highlight_at_1_is_the_flat_white():
    estimate = noisy_estimates(np.full((4, PHI.shape[1]), 0.9))
    spectra, mask = project(estimate, np.ones((4, 3)))
    assert not mask.any()
    np.testing.assert_allclose(spectra, 1.0, atol=1e-6)  # the only spectrum in [0, 1] rendering to white


def test_a_clipped_highlight_keeps_its_rgb_with_bands_above_1():
    rgb = np.array([[1.0, 1.0, 0.7], [1.0, 0.85, 0.6], [0.95, 1.0, 1.0]])
    projection = FeasibleProjection(CAMERA)
    assert (projection.gauge(torch.from_numpy(rgb)) > 1).all()  # no spectrum in [0, 1] renders to these
    spectra, mask = project(noisy_estimates(np.full((3, PHI.shape[1]), 0.9)), rgb)
    assert not mask.any() and np.abs(spectra @ PHI.T - rgb).max() <= 1e-9
    assert spectra.min() >= 0 and 1 < spectra.max() <= MAX_VALUE


def test_beyond_the_white_the_bound_grows_with_the_colour_and_the_spectrum_moves_with_it():
    """A colour 1.3 times beyond [0, 1]'s gamut gets bands of at most 1.001 x 1.3 (not up to MAX_VALUE), and a
    change of 1e-4 in its RGB moves its spectrum by about as much (a bound that jumps moved it by up to 1)."""
    projection = FeasibleProjection(CAMERA)
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(8, 3, dtype=torch.float64, generator=generator) * 0.5 + 0.5
    base = base / projection.gauge(base).unsqueeze(1)  # on the edge of [0, 1]'s gamut
    estimate = 1.3 + 0.3 * torch.randn(8, CAMERA.num_bands, dtype=torch.float64, generator=generator)
    first, flags = projection(estimate.clone(), base * 1.3, dim=1)
    second, _ = projection(estimate.clone(), base * 1.3001, dim=1)
    assert not flags.any() and first.max() <= 1.3 * 1.001 * (1 + 1e-5)  # the gauge is found in float32 first
    assert (first - second).abs().max() < 1e-3


@pytest.mark.parametrize("primary", PURE_SRGB_PRIMARIES + [(0.1, 0.9, 0.05)], ids=["red", "green", "blue", "lime"])
def test_a_colour_outside_the_cameras_gamut_is_flagged_with_the_least_rgb_change(primary):
    rgb = np.array([primary])
    estimate = noisy_estimates(np.full((1, PHI.shape[1]), 0.3))
    spectra, mask = project(estimate, rgb)
    assert mask.all()
    assert spectra.min() >= 0 and spectra.max() <= MAX_VALUE
    change = np.linalg.norm(spectra[0] @ PHI.T - rgb[0])
    assert least_rgb_change(rgb[0], MAX_VALUE) > 1e-3  # really out of gamut
    assert change == pytest.approx(least_rgb_change(rgb[0], MAX_VALUE), rel=1e-3, abs=1e-6)


def test_the_gauge_is_the_smallest_bound_that_admits_the_rgb():
    projection = FeasibleProjection(CAMERA)
    truth = smooth_spectra(200)
    gauge = projection.gauge(torch.from_numpy(truth @ PHI.T)).numpy()
    assert (gauge <= truth.max(axis=1) * (1 + 1e-5)).all()  # each spectrum itself stays within its largest band
    flat = projection.gauge(torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])).numpy()
    np.testing.assert_allclose(flat, [1.0, 0.5, 0.0], atol=1e-5)


# ---------------------------------------------------------------------------------------------- interface
def test_any_layout_and_the_input_is_left_alone():
    truth = smooth_spectra(2 * 3 * 5, seed=7)
    rgb = torch.from_numpy(truth @ PHI.T).float().reshape(2, 3, 5, 3).permute(0, 3, 1, 2)  # N x 3 x H x W
    estimate = torch.from_numpy(noisy_estimates(truth, seed=8)).float().reshape(2, 3, 5, 31).permute(0, 3, 1, 2)
    before = estimate.clone()
    spectra, mask = project_feasible(estimate, rgb, CAMERA, dim=1)
    assert spectra.shape == (2, 31, 3, 5) and mask.shape == (2, 3, 5) and mask.dtype == torch.bool
    torch.testing.assert_close(estimate, before, rtol=0, atol=0)
    flat, _ = project_feasible(estimate.permute(0, 2, 3, 1).reshape(-1, 31), rgb.permute(0, 2, 3, 1).reshape(-1, 3),
                               CAMERA)
    torch.testing.assert_close(spectra.permute(0, 2, 3, 1).reshape(-1, 31), flat, rtol=0, atol=0)
    with pytest.raises(ValueError, match="31 bands and 3 RGB channels"):
        project_feasible(estimate, rgb, CAMERA, dim=-1)


def test_the_regression_baseline_is_physical_by_default_and_raw_on_request():
    from uldm.baseline import RootPolynomialRegression

    rng = np.random.default_rng(0)
    model = RootPolynomialRegression(rng.normal(0, 0.3, (7, 31)), CAMERA)
    rgb = np.concatenate([smooth_spectra(60) @ PHI.T, [[0.0, 1.0, 0.0]]]).reshape(61, 1, 3).astype(np.float32)
    raw = RootPolynomialRegression(model.weights, CAMERA, physical=False).predict(rgb)
    physical = model.predict(rgb)
    assert raw.out_of_gamut is None and raw.spectra.min() < -0.01
    assert physical.out_of_gamut.shape == (61, 1) and physical.out_of_gamut[-1, 0] and not physical.out_of_gamut[:-1].any()
    expected, _ = project(raw.spectra.reshape(61, 31), rgb.reshape(61, 3))
    np.testing.assert_allclose(physical.spectra.reshape(61, 31), expected, atol=1e-6)  # projected in float64
    np.testing.assert_array_equal(model(rgb), physical.spectra)


def test_cli_reconstruct_stores_the_mask_and_raw_skips_the_projection(tmp_path):
    from PIL import Image

    from uldm.checkpoints import CHECKPOINTS_DIR
    from uldm.cli import main
    from uldm.io import load_cube, load_cube_attrs, load_out_of_gamut

    baseline = CHECKPOINTS_DIR / "baseline-rootpoly-nikon5100.npz"
    image = np.full((6, 8, 3), 120, dtype=np.uint8)
    image[:2, :3] = (0, 255, 0)  # pure sRGB green: outside the Nikon 5100's gamut
    Image.fromarray(image).save(tmp_path / "scene.png")
    assert main(["reconstruct", str(tmp_path / "scene.png"), "-o", str(tmp_path / "out"), "--checkpoint",
                 str(baseline)]) == 0
    mask = load_out_of_gamut(tmp_path / "out" / "scene.h5")
    assert mask.shape == (6, 8) and mask[:2, :3].all() and not mask[2:].any()
    assert load_cube(tmp_path / "out" / "scene.h5")[0].min() >= 0 and load_cube_attrs(tmp_path / "out" / "scene.h5")["physical"]
    assert main(["reconstruct", str(tmp_path / "scene.png"), "-o", str(tmp_path / "raw"), "--checkpoint",
                 str(baseline), "--raw"]) == 0
    assert load_out_of_gamut(tmp_path / "raw" / "scene.h5") is None


def test_the_benchmarks_projection_of_the_raw_output_is_the_uldm_pipelines_default_output(tiny_pipeline):
    """benchmarks/physical_spectra.py times `pipelines.common.physical_spectra` on a pipeline's raw output as the
    projection's cost; the ULDM pipeline projects inside its own composition: the two give the same spectra."""
    from uldm.pipelines.common import physical_spectra

    rgb = np.random.default_rng(0).uniform(0.05, 0.95, (16, 24, 3)).astype(np.float32)
    rgb[:4] = [0.9, 0.02, 0.02]  # a saturated red band: the projection has work to do
    call = dict(input_space="linear", show_progress_bar=False)
    default = tiny_pipeline(rgb, generator=torch.Generator().manual_seed(0), **call)
    raw = tiny_pipeline(rgb, generator=torch.Generator().manual_seed(0), physical=False, **call)
    spectra, mask = physical_spectra(tiny_pipeline.camera, torch.from_numpy(raw.spectra).permute(0, 3, 1, 2).double(),
                                     torch.from_numpy(rgb).permute(2, 0, 1)[None].double())
    assert np.abs(raw.spectra - default.spectra).max() > 1e-3  # the raw estimate is not already physical
    np.testing.assert_allclose(spectra.permute(0, 2, 3, 1).numpy(), default.spectra, atol=1e-5)
    np.testing.assert_array_equal(mask.numpy(), default.out_of_gamut)
