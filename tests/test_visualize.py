"""Previews and plots: colours that make sense, PNGs that open, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from uldm import DEFAULT_GRID, SpectralGrid
from uldm.visualize import cube_to_srgb, false_colour, plot_curve, plot_spectra, save_preview

WL = DEFAULT_GRID.as_array()


def flat(value: float, height: int = 4, width: int = 5) -> np.ndarray:
    return np.full((height, width, WL.size), value, dtype=np.float32)


def reddish() -> np.ndarray:
    return np.where(WL >= 600, 0.8, 0.05)[None, None, :].astype(np.float32)


@pytest.fixture
def scene() -> np.ndarray:
    """Grey on the left, red on the right, a blue square in the middle."""
    cube = flat(0.5, 24, 32)
    cube[:, 16:] = reddish()
    cube[8:16, 12:20] = np.where(WL <= 480, 0.7, 0.05)
    return cube


def test_flat_grey_is_neutral():
    rgb = cube_to_srgb(flat(0.5), WL)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 5, 3)
    assert int(rgb.max()) - int(rgb.min()) <= 2
    assert 180 <= rgb[0, 0, 0] <= 195  # sRGB encoding of linear 0.5 is 188


def test_neutral_on_another_grid_too():
    grid = SpectralGrid.uniform(420, 720, 20)
    rgb = cube_to_srgb(np.full((1, 1, grid.num_bands), 0.2), grid.wavelengths)
    assert int(rgb.max()) - int(rgb.min()) <= 2


def test_white_black_and_clipping():
    assert (cube_to_srgb(flat(1.0), WL) == 255).all()
    assert (cube_to_srgb(flat(0.0), WL) == 0).all()
    assert (cube_to_srgb(flat(3.0), WL) == 255).all()


def test_reddish_spectrum_is_red():
    r, g, b = (int(v) for v in cube_to_srgb(reddish(), WL)[0, 0])
    assert r > g and r > b


def test_torch_input():
    torch = pytest.importorskip("torch")
    assert np.array_equal(cube_to_srgb(torch.tensor(flat(0.5)), WL), cube_to_srgb(flat(0.5), WL))


def test_band_count_mismatch():
    with pytest.raises(ValueError, match="31 bands but 30 wavelengths"):
        cube_to_srgb(flat(0.5), WL[:30])


def test_false_colour_picks_nearest_bands_and_scales_robustly():
    cube = np.zeros((40, 50, WL.size), dtype=np.float32)
    cube[..., np.argmin(np.abs(WL - 650))] = 0.4  # red channel only
    cube[0, 0, np.argmin(np.abs(WL - 650))] = 50.0  # one specular pixel must not darken the rest
    image = false_colour(cube, WL)
    assert image.dtype == np.uint8 and image.shape == (40, 50, 3)
    assert image[5, 5, 0] == 255 and image[5, 5, 1] == 0 and image[5, 5, 2] == 0
    with pytest.raises(ValueError, match="three"):
        false_colour(cube, WL, bands_nm=(600, 500))


@pytest.mark.parametrize("mode", ["srgb", "false"])
def test_save_preview_writes_a_png(tmp_path, scene, mode):
    path = save_preview(tmp_path / f"preview_{mode}.png", scene, WL, mode=mode)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (32, 24) and image.mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"preview_{mode}.png"]


def test_save_preview_unknown_mode(tmp_path, scene):
    with pytest.raises(ValueError, match="srgb"):
        save_preview(tmp_path / "p.png", scene, WL, mode="ir")


def test_plot_spectra_writes_a_png(tmp_path, scene):
    rng = np.random.default_rng(0)
    reference = np.clip(scene + rng.normal(0, 0.03, scene.shape), 0, 1)
    path = plot_spectra(
        tmp_path / "spectra.png", scene, WL, [(4, 4), (20, 28), (12, 16)],
        reference=reference, uncertainty=np.full_like(scene, 0.04), labels=["grey", "red", "blue"],
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1100, 450)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spectra.png"]


def test_plot_spectra_rejects_bad_pixels_and_shapes(tmp_path, scene):
    with pytest.raises(ValueError, match=r"row 24, column 0.*24 x 32"):
        plot_spectra(tmp_path / "a.png", scene, WL, [(0, 0), (24, 0)])
    with pytest.raises(ValueError, match="outside"):
        plot_spectra(tmp_path / "a.png", scene, WL, [(-1, 3)])
    with pytest.raises(ValueError, match="reference shape"):
        plot_spectra(tmp_path / "a.png", scene, WL, [(0, 0)], reference=scene[:5])
    with pytest.raises(ValueError, match="2 labels given for 1 pixels"):
        plot_spectra(tmp_path / "a.png", scene, WL, [(0, 0)], labels=["a", "b"])
    assert list(tmp_path.iterdir()) == []


def test_plot_curve(tmp_path):
    path = plot_curve(tmp_path / "curve.png", [1, 2, 4, 8], {"MRAE": [0.3, 0.2, 0.15, 0.14], "SAM": [9, 7, 6, 6]},
                      "steps", "score", "quality vs steps")
    with Image.open(path) as image:
        assert image.size == (600, 400)
    with pytest.raises(ValueError, match="'MRAE' has 3 values for 4"):
        plot_curve(tmp_path / "bad.png", [1, 2, 3, 4], {"MRAE": [1, 2, 3]}, "x", "y", "t")
