"""Spectral grid, camera responses, degradation and the observable/unobservable split."""

import numpy as np
import pytest
import torch

from uldm import CameraError, CameraResponse, Degradation, ObservableSplit, SpectralGrid, SpectralGridError, available_cameras
from uldm.spectral import DEFAULT_GRID


# ------------------------------------------------------------------------------------------------ grid
def test_default_grid_is_31_bands_400_to_700():
    assert DEFAULT_GRID.num_bands == 31
    assert DEFAULT_GRID.wavelengths[0] == 400 and DEFAULT_GRID.wavelengths[-1] == 700


def test_resample_is_exact_for_linear_spectra_and_refuses_extrapolation():
    fine = SpectralGrid.uniform(400, 700, 5)
    values = 0.001 * fine.as_array() - 0.3  # linear in wavelength: interpolation is exact
    out = DEFAULT_GRID.resample(values[None, :], fine.wavelengths, axis=1)
    np.testing.assert_allclose(out[0], 0.001 * DEFAULT_GRID.as_array() - 0.3, atol=1e-12)
    with pytest.raises(SpectralGridError, match="420-720"):
        DEFAULT_GRID.resample(np.zeros(31), SpectralGrid.uniform(420, 720, 10).wavelengths)


def test_grid_rejects_unsorted_wavelengths():
    with pytest.raises(SpectralGridError):
        SpectralGrid((400.0, 420.0, 410.0, 430.0))


# ---------------------------------------------------------------------------------------------- camera
@pytest.mark.parametrize("name", ["Nikon 5100 (NPL)", "nikon5100", "canon-5d-mark-ii", "cie1931"])
def test_presets_load_normalised(name):
    camera = CameraResponse.from_preset(name)
    assert camera.matrix.shape == (3, 31)
    # a flat unit spectrum renders to (1, 1, 1)
    np.testing.assert_allclose(camera.render(np.ones(31)), np.ones(3), atol=1e-12)


def test_presets_include_the_required_cameras():
    names = available_cameras()
    assert "Nikon 5100 (NPL)" in names and "Canon EOS 5D Mark II" in names
    assert "CIE 1931 2 Degree Standard Observer" in names


def test_nikon_matches_colour_science_data():
    import colour

    raw = colour.MSDS_CAMERA_SENSITIVITIES["Nikon 5100 (NPL)"]
    at_550 = raw[550]  # red, green, blue at 550 nm
    camera = CameraResponse.from_preset("nikon5100", normalize=False)
    np.testing.assert_allclose(camera.matrix[:, 15], at_550, rtol=1e-9)  # band 15 is 550 nm


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(CameraError, match="Nikon 5100"):
        CameraResponse.from_preset("leica-m11")


def test_camera_from_csv_resamples_to_grid(tmp_path):
    wl = np.arange(380, 781, 5)
    rows = ["wavelength,r,g,b"] + [f"{w},{np.exp(-((w-600)/40)**2)},{np.exp(-((w-540)/40)**2)},{np.exp(-((w-450)/30)**2)}" for w in wl]
    path = tmp_path / "mycam.csv"
    path.write_text("\n".join(rows))
    camera = CameraResponse.from_csv(path)
    assert camera.name == "mycam"
    assert np.argmax(camera.matrix[0]) == 20  # red peaks at 600 nm
    np.testing.assert_allclose(camera.matrix.sum(axis=1), 1.0)


def test_camera_that_does_not_cover_grid_fails_clearly(tmp_path):
    path = tmp_path / "narrow.csv"
    path.write_text("\n".join(f"{w},1,0.5,0.2" if w % 20 else f"{w},0.2,1,0.5" for w in range(450, 651, 10)))
    with pytest.raises(CameraError, match="does not cover.*450-650"):
        CameraResponse.from_csv(path)


def test_camera_csv_with_garbage_names_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("wavelength,r,g,b\n400,1,2,x\n")
    with pytest.raises(CameraError, match="bad.csv"):
        CameraResponse.from_csv(path)


def test_camera_config_round_trip():
    camera = CameraResponse.from_preset("canon-5d-mark-ii")
    assert CameraResponse.from_config(camera.to_config()) == camera
    with pytest.raises(CameraError, match="missing keys"):
        CameraResponse.from_config({"name": "x"})


def test_render_numpy_and_torch_agree_on_any_channel_axis():
    camera = CameraResponse.from_preset("nikon5100")
    cube = np.random.default_rng(0).random((4, 5, 31))
    rgb = camera.render(cube)
    assert rgb.shape == (4, 5, 3)
    chw = torch.from_numpy(cube).permute(2, 0, 1)[None]
    rgb_t = camera.render(chw, channel_axis=1)
    np.testing.assert_allclose(rgb_t[0].permute(1, 2, 0).numpy(), rgb, atol=1e-12)
    with pytest.raises(CameraError, match="31 bands"):
        camera.render(np.zeros((4, 5, 30)))


# ------------------------------------------------------------------------------------------ degradation
def test_degradation_is_seeded_and_quantises():
    rgb = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    degrade = Degradation(photons=500, bit_depth=8)
    a, b = degrade(rgb, seed=3), degrade(rgb, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, degrade(rgb, seed=4))
    np.testing.assert_allclose(a * 255, np.round(a * 255), atol=1e-4)
    # shot noise: variance ~ value / photons
    flat = Degradation(photons=100)(np.full((256, 256, 3), 0.5, np.float32), seed=0)
    assert abs(flat.var() - 0.5 / 100) < 0.0005


def test_jpeg_degradation_changes_image_but_stays_close():
    rgb = np.random.default_rng(2).random((32, 32, 3)).astype(np.float32) * 0.2 + 0.4
    out = Degradation(jpeg_quality=75)(rgb)
    assert out.dtype == np.float32 and out.shape == rgb.shape
    assert 0 < np.abs(out - rgb).mean() < 0.1


def test_identity_degradation_and_config():
    assert Degradation().is_identity
    assert Degradation.from_config({"photons": 10.0}).photons == 10.0
    with pytest.raises(ValueError, match="unknown degradation keys"):
        Degradation.from_config({"noise": 1})


# ----------------------------------------------------------------------------------------------- split
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("camera_name", ["nikon5100", "canon-5d-mark-ii", "cie1931"])
def test_compose_always_renders_back_to_rgb(dtype, tol, camera_name):
    split = ObservableSplit(CameraResponse.from_preset(camera_name))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # random property test over batches and arbitrary unobservable parts
        rgb = torch.rand(2, 3, 8, 7, generator=gen, dtype=dtype)
        u = torch.randn(2, 28, 8, 7, generator=gen, dtype=dtype) * 3
        rendered = split.render(split.compose(rgb, u, dim=1), dim=1)
        assert rendered.dtype == dtype
        assert (rendered - rgb).abs().max() < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
def test_split_then_compose_is_identity(dtype, tol):
    split = ObservableSplit(CameraResponse.from_preset("nikon5100"))
    spectra = torch.rand(3, 10, 31, dtype=dtype)
    rgb, u = split.split(spectra)
    assert rgb.shape == (3, 10, 3) and u.shape == (3, 10, 28)
    assert (split.compose(rgb, u) - spectra).abs().max() < tol


def test_null_basis_is_orthonormal_and_invisible():
    split = ObservableSplit(CameraResponse.from_preset("nikon5100"))
    n = split.null_basis
    torch.testing.assert_close(n.T @ n, torch.eye(28, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (split.response @ n).abs().max() < 1e-12
    # Φ Φ⁺ = I
    torch.testing.assert_close(split.response @ split.pinv, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_split_rejects_wrong_channel_count():
    split = ObservableSplit(CameraResponse.from_preset("nikon5100"))
    with pytest.raises(ValueError, match="expected 31 channels"):
        split.split(torch.zeros(2, 30))
