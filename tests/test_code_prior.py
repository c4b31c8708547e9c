"""The code prior: the root-polynomial regression as a pipeline component, and the ULDM pipeline built around it."""

import json

import numpy as np
import pytest
import torch

from uldm import SpectralReconstructionPipeline
from uldm.baseline import RootPolynomialRegression, root_polynomial_features
from uldm.camera import CameraResponse
from uldm.models.code_prior import RootPolynomialPrior, code_to_residual, prior_code, residual_to_code


@pytest.fixture
def regression() -> RootPolynomialRegression:
    """A regression fitted on smooth random spectra rendered with the Nikon 5100 (the tiny pipeline's camera)."""
    camera = CameraResponse.from_preset("nikon5100")
    generator = np.random.default_rng(0)
    bands = np.linspace(0, 1, camera.num_bands)
    spectra = np.stack([0.3 + 0.2 * np.sin(2 * np.pi * (f * bands + p)) for f, p in generator.uniform(0.2, 1.5, (500, 2))])
    return RootPolynomialRegression.fit(camera.render(spectra), spectra, camera)


@pytest.fixture
def rgb() -> np.ndarray:
    yy, xx = np.mgrid[0:24, 0:20] / 24.0
    return np.stack([0.2 + 0.5 * yy, 0.3 + 0.4 * xx, 0.6 - 0.3 * yy], axis=-1).astype(np.float32)


def with_prior(pipeline, regression, scale: float) -> SpectralReconstructionPipeline:
    components = {**pipeline.components, "code_prior": RootPolynomialPrior.from_regression(regression)}
    return SpectralReconstructionPipeline(**components, default_denoising_steps=2, code_residual_scale=scale)


def run(pipe, image, seed=0):
    return pipe(image, generator=torch.Generator().manual_seed(seed), input_space="linear", show_progress_bar=False)


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def test_prior_is_the_baseline_regression_and_survives_save_load(regression, rgb, tmp_path):
    prior = RootPolynomialPrior.from_regression(regression)
    spectra = prior(as_batch(rgb))[0].permute(1, 2, 0).detach().numpy()
    np.testing.assert_allclose(spectra, regression(rgb), atol=1e-5)
    prior.save_pretrained(tmp_path / "prior")
    loaded = RootPolynomialPrior.from_pretrained(tmp_path / "prior")
    assert torch.equal(loaded.weights, prior.weights) and loaded.config.num_bands == 31
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        prior(torch.zeros(1, 4, 2, 2))


def test_a_degree_3_prior_is_that_regression_and_keeps_its_degree(regression, rgb, tmp_path):
    camera = regression.camera
    pixels = rgb.reshape(-1, 3)
    spectra = regression(rgb).reshape(-1, camera.num_bands) * (1 + 0.5 * pixels[:, :1])  # not in degree 2's span
    cubic = RootPolynomialRegression.fit(pixels, spectra, camera, degree=3)
    prior = RootPolynomialPrior.from_regression(cubic)
    assert prior.config.degree == 3 and prior.weights.shape == (14, camera.num_bands)
    assert torch.equal(prior.weights, torch.from_numpy(cubic.weights).float())
    # in float64, so the check is of the features and not of float32 rounding (degree-3 weights are large)
    expected = root_polynomial_features(rgb.astype(np.float64), 3) @ prior.weights.double().numpy()
    np.testing.assert_allclose(prior.double()(as_batch(rgb))[0].permute(1, 2, 0).numpy(), expected, rtol=1e-10)
    prior.save_pretrained(tmp_path / "prior")
    loaded = RootPolynomialPrior.from_pretrained(tmp_path / "prior")
    assert loaded.config.degree == 3 and torch.equal(loaded.weights, prior.weights)


def test_residual_round_trip_and_clamping():
    code, prior = torch.tensor([0.5, -0.2, 0.9]), torch.tensor([0.4, -0.1, 0.0])
    residual = code_to_residual(code, prior, 3.0)
    torch.testing.assert_close(residual, torch.tensor([0.3, -0.3, 1.0]))  # the last one clipped at 1
    torch.testing.assert_close(residual_to_code(residual, prior, 3.0)[:2], code[:2])


def test_pipeline_adds_the_prior_code_to_the_decoded_residual(tiny_pipeline, regression, rgb):
    plain = run(tiny_pipeline, rgb)  # no prior: `code` is the VAE's image itself
    pipe = with_prior(tiny_pipeline, regression, scale=3.0)
    out = run(pipe, rgb)
    with torch.no_grad():
        expected_prior = prior_code(pipe.code_prior, pipe.speuae, as_batch(rgb))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out.code[0], np.clip(expected_prior + plain.code[0] / 3.0, -1, 1), atol=1e-5)
    assert out.rgb_error[0] < 1e-5  # the observable part stays exact
    assert np.abs(out.code[0] - plain.code[0]).max() > 0.05


def test_a_huge_residual_scale_leaves_the_prior_alone(tiny_pipeline, regression, rgb):
    pipe = with_prior(tiny_pipeline, regression, scale=1e6)
    out = pipe(rgb, generator=torch.Generator().manual_seed(0), input_space="linear", show_progress_bar=False,
               physical=False)  # the prior's own spectra, before they are made physical
    batch = as_batch(rgb)
    with torch.no_grad():
        expected = pipe.speuae.decode(prior_code(pipe.code_prior, pipe.speuae, batch), batch)[0].permute(1, 2, 0)
    np.testing.assert_allclose(out.spectra[0], expected.numpy(), atol=1e-4)


def test_the_residual_weight_shrinks_the_generated_residual_toward_the_prior_and_is_saved(tiny_pipeline, regression,
                                                                                         rgb, tmp_path):
    """code = prior + weight x residual / scale: 1 is the code as trained, 0 the prior's code alone, 0.5 halfway;
    the weight is part of the config (saved, loaded) and one outside [0, 1] is refused."""
    pipe = with_prior(tiny_pipeline, regression, scale=3.0)
    trained = run(pipe, rgb)
    with torch.no_grad():
        alone = prior_code(pipe.code_prior, pipe.speuae, as_batch(rgb))[0].permute(1, 2, 0).numpy()
    pipe.register_to_config(code_residual_weight=0.0)
    np.testing.assert_allclose(run(pipe, rgb).code[0], alone, atol=1e-6)
    pipe.register_to_config(code_residual_weight=0.5)
    half = run(pipe, rgb)
    unclipped = np.abs(trained.code[0]) < 0.99
    np.testing.assert_allclose(half.code[0][unclipped], ((alone + trained.code[0]) / 2)[unclipped], atol=1e-5)
    assert half.rgb_error[0] < 1e-5
    pipe.save_pretrained(tmp_path / "weighted")
    loaded = SpectralReconstructionPipeline.from_pretrained(tmp_path / "weighted")
    assert loaded.config.code_residual_weight == 0.5
    np.testing.assert_array_equal(run(loaded, rgb).spectra, half.spectra)
    with pytest.raises(ValueError, match="code_residual_weight"):
        SpectralReconstructionPipeline(**pipe.components, code_residual_scale=3.0, code_residual_weight=1.5)


def test_pipeline_with_a_prior_saves_and_loads_and_old_folders_load_without_one(tiny_pipeline, regression, rgb, tmp_path):
    pipe = with_prior(tiny_pipeline, regression, scale=3.0)
    pipe.save_pretrained(tmp_path / "with")
    loaded = SpectralReconstructionPipeline.from_pretrained(tmp_path / "with")
    assert loaded.config.code_residual_scale == 3.0 and isinstance(loaded.code_prior, RootPolynomialPrior)
    np.testing.assert_array_equal(run(loaded, rgb).spectra, run(pipe, rgb).spectra)

    tiny_pipeline.save_pretrained(tmp_path / "old")
    index = json.loads((tmp_path / "old" / "model_index.json").read_text())
    index.pop("code_prior", None), index.pop("code_residual_scale", None)  # as written before the prior existed
    (tmp_path / "old" / "model_index.json").write_text(json.dumps(index))
    old = SpectralReconstructionPipeline.from_pretrained(tmp_path / "old")
    assert old.code_prior is None and old.config.code_residual_scale == 1.0
    np.testing.assert_array_equal(run(old, rgb).spectra, run(tiny_pipeline, rgb).spectra)

    with pytest.raises(ValueError, match="code_residual_scale"):
        with_prior(tiny_pipeline, regression, scale=0.0)


@pytest.mark.parametrize("speuae_kwargs", [{"refine_steps": 1, "refine_block": 2}, {"context": 3}],
                         ids=["gauss-newton-blocks", "context-3"])
def test_the_full_resolution_tail_in_bands_equals_the_whole_image(tiny_pipeline, regression, rgb, speuae_kwargs):
    """compose_spectra works band by band of rows (bounded memory); the answer is the whole image's, also for a
    SpeUAE that sees neighbours or shares Jacobians across blocks, and for ensembles and both output layouts."""
    from uldm.models import SpeUAE

    torch.manual_seed(0)
    speuae = SpeUAE(encoder_channels=16, decoder_channels=16, num_layers=2, **speuae_kwargs).eval()
    with torch.no_grad():  # the residual MLPs start at zero: give them weights, so neighbours and blocks matter
        for parameter in speuae.parameters():
            parameter.normal_(0, 0.3)
    pipe = with_prior(tiny_pipeline, regression, 3.0)
    pipe.register_modules(speuae=speuae)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)  # 2 images, 24 x 20
    codes = torch.rand(6, 3, 24, 20) * 2 - 1  # 3 members each
    for channels_last in (False, True):
        whole = pipe.compose_spectra(codes, image, 3, channels_last=channels_last, tile_pixels=10**9)
        banded = pipe.compose_spectra(codes, image, 3, channels_last=channels_last, tile_pixels=60)  # 3-row bands
        for a, b in zip(whole, banded):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert whole[3].max() < 1e-5  # the composition stays exact in RGB
