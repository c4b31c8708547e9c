"""R2H-Diff: the denoising network, its complexity budget, the scheduler and the loss (CPU, tiny sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uldm.models.r2hdiff import (
    HATA,
    R2HBlock,
    R2HDiffNet,
    count_flops,
    count_parameters,
    gradient_consistency_loss,
    inference_timesteps,
    linear_noise_schedule,
    make_r2hdiff_scheduler,
    r2hdiff_loss,
)

TINY = {
    "block_channels": (8, 16),
    "rgb_feature_channels": (4, 8),
    "layers_per_level": (1, 1),
    "attention_heads": (1, 2),
    "time_embed_dim": 16,
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its initial value (the zero-initialised residual scalars make a fresh model
    ignore most of its layers, which would let a broken layer go unnoticed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


# ------------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("batch, height, width", [(2, 37, 45), (1, 1, 1), (3, 5, 8)])
def test_output_has_the_input_shape_for_any_size(batch, height, width):
    model = R2HDiffNet()
    noisy, rgb = torch.randn(batch, 31, height, width), torch.rand(batch, 3, height, width)
    with torch.no_grad():
        out = model(noisy, rgb, torch.full((batch,), 999))
        assert out.shape == (batch, 31, height, width)
        assert model(noisy, rgb, 500).shape == out.shape  # a scalar timestep is broadcast over the batch
    assert torch.isfinite(out).all()


def test_bad_shapes_are_rejected():
    model = R2HDiffNet(**TINY)
    with pytest.raises(ValueError, match="N x 31 x H x W"):
        model(torch.randn(1, 30, 8, 8), torch.rand(1, 3, 8, 8), 1)
    with pytest.raises(ValueError, match="rgb"):
        model(torch.randn(1, 31, 8, 8), torch.rand(1, 3, 8, 9), 1)
    with pytest.raises(ValueError, match="timesteps"):
        model(torch.randn(2, 31, 8, 8), torch.rand(2, 3, 8, 8), torch.tensor([1, 2, 3]))


def test_parameter_count_is_in_the_papers_range():
    assert 0.4e6 <= count_parameters(R2HDiffNet()) <= 0.8e6  # the paper: 0.58 M


def test_network_has_no_normalisation_layers():
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    offenders = [name for name, module in R2HDiffNet().named_modules() if isinstance(module, norms)]
    assert offenders == []


def test_blocks_and_guides_start_as_the_identity():
    """ReZero: the residual scalars start at 0, so depth cannot destabilise the start of training."""
    block = R2HBlock(16, 2, time_embed_dim=8, expansion=2.0)
    x = torch.randn(2, 16, 6, 7)
    assert torch.equal(block(x, torch.randn(2, 8)), x)
    model = R2HDiffNet(**TINY)
    guide = model.encoder_guides[0]
    features = torch.randn(1, 8, 6, 7)
    assert torch.equal(guide(features, torch.randn(1, 4, 6, 7)), features)


def test_timestep_and_rgb_change_the_output_of_a_trained_looking_model():
    model = _perturbed(R2HDiffNet(**TINY))
    noisy, rgb = torch.randn(1, 31, 12, 10), torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        out = model(noisy, rgb, 999)
        assert not torch.allclose(out, model(noisy, rgb, 0))
        assert not torch.allclose(out, model(noisy, rgb.flip(-1), 999))


def test_flops_grow_linearly_with_area():
    """Transposed attention is C x C: doubling the side quadruples the work (a pixel attention would x16)."""
    with torch.device("meta"):  # FLOPs depend on shapes only: no arithmetic needed
        model = R2HDiffNet()
        attention = HATA(32, 1)
    assert 3.5 <= count_flops(model, 128) / count_flops(model, 64) <= 4.5

    from torch.utils.flop_counter import FlopCounterMode

    def attention_flops(size: int) -> int:
        with FlopCounterMode(display=False) as counter:
            attention(torch.empty(1, 32, size, size, device="meta"))
        return counter.get_total_flops()

    assert attention_flops(128) / attention_flops(64) == pytest.approx(4, rel=1e-3)  # + the gate's constant MLP


def test_flops_at_256_are_in_the_papers_range():
    with torch.device("meta"):
        model = R2HDiffNet()
    macs = count_flops(model, 256) / 2  # FlopCounterMode counts a multiply-add as 2
    assert 8e9 <= macs <= 16e9  # the paper: 12.25 G (fvcore convention, multiply-accumulates)


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path):
    model = _perturbed(R2HDiffNet(**TINY, prediction_type="epsilon"))
    model.save_pretrained(tmp_path / "r2h")
    assert (tmp_path / "r2h" / "diffusion_pytorch_model.safetensors").exists()
    loaded = R2HDiffNet.from_pretrained(tmp_path / "r2h")
    assert loaded.config.prediction_type == "epsilon"
    assert tuple(loaded.config.block_channels) == (8, 16)
    noisy, rgb = torch.randn(2, 31, 9, 11), torch.rand(2, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(model(noisy, rgb, torch.tensor([3, 700])), loaded(noisy, rgb, torch.tensor([3, 700])))


def test_a_few_optimisation_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = R2HDiffNet(**TINY)
    target = F.interpolate(torch.rand(2, 31, 3, 3), size=(12, 12), mode="bilinear", align_corners=False)  # smooth
    rgb = target[:, [25, 15, 5]]
    noisy = 0.5 * target + 0.5 * torch.randn_like(target)
    timestep = torch.tensor([400, 600])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = r2hdiff_loss(model(noisy, rgb, timestep), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]  # about 0.52 x in practice


def test_regression_skip_starts_at_the_least_squares_fit_and_round_trips(tmp_path):
    from uldm.baseline import RootPolynomialRegression
    from uldm.camera import CameraResponse

    camera = CameraResponse.from_preset("nikon5100")
    generator = torch.Generator().manual_seed(0)
    spectra = torch.rand(400, 31, generator=generator, dtype=torch.float64)
    rgb = torch.from_numpy(camera.render(spectra.numpy()))
    model = R2HDiffNet(**TINY, regression_skip=True)
    model.init_regression(rgb, spectra)
    reference = RootPolynomialRegression.fit(rgb.numpy(), spectra.numpy(), camera)  # the baseline's own fit
    image = rgb[:48].T.reshape(1, 3, 6, 8).float()
    expected = torch.from_numpy(reference(image[0].permute(1, 2, 0).numpy())).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = model(torch.randn(1, 31, 6, 8), image, 999)  # the head is zero at the start: the fit alone
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.regression_estimate(image), expected, atol=1e-5, rtol=0)
    _perturbed(model).save_pretrained(tmp_path / "skip")
    loaded = R2HDiffNet.from_pretrained(tmp_path / "skip")
    assert loaded.config.regression_skip
    with torch.no_grad():
        noisy = torch.randn(1, 31, 6, 8)
        torch.testing.assert_close(model(noisy, image, 10), loaded(noisy, image, 10), atol=2e-6, rtol=0)
        assert not torch.allclose(model(noisy, image, 10), model.regression_estimate(image))  # the U-Net adds to it


def test_regression_skip_needs_a_clean_cube_prediction():
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        R2HDiffNet(**TINY, regression_skip=True, prediction_type="epsilon")
    with pytest.raises(ValueError, match="without regression_skip"):
        R2HDiffNet(**TINY).regression_estimate(torch.rand(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------------- diffusion
def test_scheduler_uses_five_trailing_timesteps_from_999():
    scheduler = make_r2hdiff_scheduler()
    assert scheduler.timesteps.tolist() == [999, 799, 599, 399, 199]
    assert scheduler.timesteps.tolist() == inference_timesteps(5, 1000)
    assert scheduler.config.timestep_spacing == "trailing"
    assert scheduler.config.prediction_type == "sample" and not scheduler.config.clip_sample


def test_scheduler_betas_are_the_linear_schedule():
    scheduler = make_r2hdiff_scheduler(zero_terminal_snr=False)
    assert torch.equal(scheduler.betas, linear_noise_schedule(1000))
    betas = linear_noise_schedule(1000, 1e-4, 0.01)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.01)
    assert (betas.diff() > 0).all()


def test_zero_terminal_snr_starts_from_pure_noise_and_refuses_epsilon():
    assert make_r2hdiff_scheduler().alphas_cumprod[-1] < 1e-6
    assert make_r2hdiff_scheduler(zero_terminal_snr=False).alphas_cumprod[-1].sqrt() > 0.05  # the leak it removes
    with pytest.raises(ValueError, match="epsilon"):
        make_r2hdiff_scheduler(prediction_type="epsilon")


def test_ddim_step_with_a_perfect_x0_prediction_lands_on_the_target():
    scheduler = make_r2hdiff_scheduler()
    target = torch.rand(1, 31, 4, 4)
    sample = torch.randn_like(target)
    for t in scheduler.timesteps:
        sample = scheduler.step(target, t, sample).prev_sample
    assert torch.allclose(sample, target, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- loss
def test_gradient_loss_is_zero_for_identical_inputs_and_constant_offsets():
    x = torch.rand(2, 31, 7, 5)
    assert gradient_consistency_loss(x, x).item() == 0
    assert gradient_consistency_loss(x + 0.3, x).item() == pytest.approx(0, abs=1e-6)
    assert gradient_consistency_loss(x, torch.rand(2, 31, 7, 5)).item() > 0


def test_gradient_loss_matches_a_hand_computed_value():
    pred = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    target = torch.zeros(1, 1, 2, 2)
    # along H: |2 - 0|, |4 - 1| -> mean 2.5; along W: |1 - 0|, |4 - 2| -> mean 1.5
    assert gradient_consistency_loss(pred, target).item() == pytest.approx(4.0)
    # L1 = mean(0, 1, 2, 4) = 1.75; weight 0.5 on the gradient term
    assert r2hdiff_loss(pred, target, gradient_weight=0.5).item() == pytest.approx(1.75 + 2.0)
    assert r2hdiff_loss(pred, target, gradient_weight=0).item() == pytest.approx(1.75)
    # MSE = mean(0, 1, 4, 16) = 5.25; weight 2 on the squared-error term
    assert r2hdiff_loss(pred, target, gradient_weight=0, mse_weight=2).item() == pytest.approx(1.75 + 10.5)


def test_gradients_are_finite_on_flat_inputs():
    """A constant 1 x 1 image (padded to 4 x 4): near-flat feature maps must not give the gate's std NaN gradients."""
    model = _perturbed(R2HDiffNet(**TINY))
    noisy, rgb = torch.full((1, 31, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5)
    r2hdiff_loss(model(noisy, rgb, 999), torch.zeros_like(noisy)).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
