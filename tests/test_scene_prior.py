"""The scene mixture prior: its bank of per-scene regressions, its gate fitted leave-scene-out, band-by-band use and
the ULDM pipeline around it."""

import numpy as np
import pytest
import torch

from uldm import SpectralReconstructionPipeline
from uldm.baseline import root_polynomial_features
from uldm.camera import CameraResponse
from uldm.models.code_prior import prior_code
from uldm.models.scene_prior import SceneMixturePrior, chromaticity_bins, context_affinities, palette
from uldm.scene_prior_fit import SceneData, fit_scene_mixture_prior

CAMERA = CameraResponse.from_preset("nikon5100")
PENALTIES = (0.0, 0.1)  # two, to keep the inner cross-validation quick


def synthetic_scenes(count: int = 4, size: int = 24) -> list[SceneData]:
    """Scenes of two materials each, smooth spectra of distinct hues per scene (bumps centred at 0.1 + 0.25 i and
    0.12 further, across the bands): a regression fitted on one scene explains it better than the global one."""
    bands = np.linspace(0, 1, CAMERA.num_bands)
    scenes = []
    for index in range(count):
        centre = 0.1 + 0.25 * index
        materials = [0.1 + 0.6 * np.exp(-((bands - c) / 0.12) ** 2) for c in (centre, centre + 0.12)]
        yy, xx = np.mgrid[0:size, 0:size] / size
        mix = (xx > 0.5)[..., None].astype(np.float64)
        shade = (0.5 + 0.5 * yy)[..., None]
        cube = (shade * ((1 - mix) * materials[0] + mix * materials[1])).astype(np.float32)
        scenes.append(SceneData(f"scene{index}", CAMERA.render(cube), cube))
    return scenes


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def fitted():
    scenes = synthetic_scenes()
    prior, record = fit_scene_mixture_prior(scenes, CAMERA, penalties=PENALTIES)
    return scenes, prior, record


def test_palettes_are_normalised_histograms_of_chromaticity():
    rgb = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], dtype=torch.float64)
    bins = chromaticity_bins(rgb, 16)
    assert bins[0] == bins[1] != bins[2]
    histogram = palette(rgb, 16)
    assert torch.isclose(histogram.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert histogram[bins[0]] > histogram[bins[2]] > 0  # twice the pixels, the same blur
    image = as_batch(np.broadcast_to(np.array([0.5, 0.25, 0.25]), (8, 8, 3))).double()
    local, whole = context_affinities(image, torch.stack([palette(rgb[:1], 16), palette(rgb[2:], 16)]), 16, 0.25)
    assert local.shape == (1, 2, 8, 8) and whole.shape == (1, 2)
    assert whole[0, 0] > 0.99 and whole[0, 1] < 0.1  # the image resembles the first palette, not the second


def test_the_bank_holds_the_global_fit_then_each_scene_and_the_gate_is_fitted(fitted):
    scenes, prior, record = fitted
    assert prior.config.num_experts == len(scenes) + 1 and prior.config.scene_names == [s.name for s in scenes]
    assert set(record["gate"]) == {"global", "density", "fit_error", "local_context", "image_context"}
    assert np.isfinite(record["leave_scene_out_log_mse"])
    assert torch.count_nonzero(prior.gate) > 0  # fitted, not left at the uniform start


def test_a_gate_that_trusts_density_picks_the_scene_that_holds_the_colour(fitted):
    """The mechanics of the mixture: with a gate on density alone, each pixel of a training scene is explained by
    that scene's own regression (the one expert whose palette holds its colours), closer than the global fit."""
    scenes, prior, _ = fitted
    sharp = SceneMixturePrior.from_config(prior.config)
    sharp.load_state_dict(prior.state_dict())
    sharp.gate.data = torch.tensor([0.0, 20.0, 0.0, 0.0, 0.0])
    scene = scenes[1]
    image = as_batch(scene.rgb)
    with torch.no_grad():
        weights = sharp.mixing_weights(sharp.gate_features(image, sharp.image_context(image), None))
        mixed = sharp(image)[0].permute(1, 2, 0).numpy()
        features = root_polynomial_features(image.movedim(1, -1), sharp.config.degree)
        global_only = (features @ sharp.expert_weights[0])[0].numpy()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert weights[..., 2].mean() > 0.9  # expert 0 is the global fit, expert 1 + i scene i's
    assert np.mean((mixed - scene.cube) ** 2) < np.mean((global_only - scene.cube) ** 2)


def test_excluding_a_scene_gives_its_expert_no_weight(fitted):
    scenes, prior, _ = fitted
    sharp = SceneMixturePrior.from_config(prior.config)
    sharp.load_state_dict(prior.state_dict())
    sharp.gate.data = torch.tensor([0.0, 20.0, 0.0, 0.0, 0.0])
    image = as_batch(scenes[1].rgb).expand(2, -1, -1, -1)
    with torch.no_grad():
        features = sharp.gate_features(image, sharp.image_context(image), None)
        exclude = torch.tensor([[False, False, True, False, False], [False] * 5])
        weights = sharp.mixing_weights(features, exclude)
        left_out = sharp.excluding(["scene1", "not in the bank"])(image)
        torch.testing.assert_close(left_out[1], sharp(image)[1])
    assert weights[0, ..., 2].max() == 0 and weights[1, ..., 2].mean() > 0.9
    assert (left_out[0] - left_out[1]).abs().max() > 1e-3


def test_band_by_band_with_the_whole_images_context_equals_the_whole_image(fitted):
    scenes, prior, _ = fitted
    image = as_batch(scenes[0].rgb)
    with torch.no_grad():
        whole = prior(image)
        context = prior.image_context(image)
        bands = torch.cat([prior(image[..., top:top + 7, :], context=context, rows=(top, min(top + 7, 24)))
                           for top in range(0, 24, 7)], dim=-2)
    torch.testing.assert_close(bands, whole, atol=1e-6, rtol=1e-5)


def test_without_its_context_path_the_gate_ignores_context(fitted):
    scenes, _, _ = fitted
    prior, record = fit_scene_mixture_prior(scenes, CAMERA, use_context=False, penalties=PENALTIES)
    assert record["gate"]["local_context"] == 0 and record["gate"]["image_context"] == 0
    assert record["penalty"] in PENALTIES and set(record["inner_crossval_log_mse"]) == {"0", "0.1"}
    assert prior.image_context(as_batch(scenes[0].rgb)) is None
    # a pixel's spectrum then depends on its colour alone: the same pixel in another image is unchanged
    first, second = as_batch(scenes[0].rgb), as_batch(scenes[2].rgb)
    joined = torch.cat([first[..., :4], second[..., 4:]], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(prior(joined)[..., :4], prior(first)[..., :4])


def test_save_load_and_errors(fitted, tmp_path):
    scenes, prior, _ = fitted
    prior.save_pretrained(tmp_path / "prior")
    loaded = SceneMixturePrior.from_pretrained(tmp_path / "prior")
    image = as_batch(scenes[0].rgb)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), prior(image))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        prior(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="at least 3 training scenes"):
        fit_scene_mixture_prior(scenes[:2], CAMERA)


def test_the_uldm_pipeline_composes_with_a_scene_mixture_prior(tiny_pipeline, fitted, tmp_path):
    scenes, prior, _ = fitted
    pipe = SpectralReconstructionPipeline(**{**tiny_pipeline.components, "code_prior": prior},
                                          default_denoising_steps=2, code_residual_scale=1e6)
    rgb = scenes[0].rgb
    out = pipe(rgb, generator=torch.Generator().manual_seed(0), input_space="linear", show_progress_bar=False,
               physical=False)  # the composition itself, before the physical projection
    assert out.rgb_error[0] < 1e-5
    batch = as_batch(rgb)
    with torch.no_grad():  # a huge residual scale leaves the prior's code alone
        expected = pipe.speuae.decode(prior_code(prior, pipe.speuae, batch), batch)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out.spectra[0], expected, atol=1e-4)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SpectralReconstructionPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.code_prior, SceneMixturePrior)
    again = loaded(rgb, generator=torch.Generator().manual_seed(0), input_space="linear", show_progress_bar=False,
                   physical=False)
    np.testing.assert_allclose(again.spectra, out.spectra, atol=1e-6)
