"""Spectral relighting: exact identities, the von Kries baseline, CIEDE2000, illuminant loading, CLI, figure."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from uldm import CameraResponse
from uldm.cli import main
from uldm.relight import (
    IlluminantError,
    available_illuminants,
    camera_rgb_to_lab,
    delta_e2000,
    load_illuminant,
    relight,
    relight_figure,
    relight_metrics,
    relight_table,
    von_kries,
    white_rgb,
)

CAMERA = CameraResponse.from_preset("nikon5100")
WL = CAMERA.grid.as_array()


def smooth_scene(height: int = 12, width: int = 16, seed: int = 0) -> np.ndarray:
    """Reflectances in [0.02, 0.95]: a few Gaussian bumps per pixel, like real surfaces (smooth, varied)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(400, 700, (height, width, 2, 1))
    widths = rng.uniform(30, 90, (height, width, 2, 1))
    heights = rng.uniform(0.1, 0.5, (height, width, 2, 1))
    bumps = (heights * np.exp(-0.5 * ((WL - centres) / widths) ** 2)).sum(axis=2)
    return np.clip(0.05 + bumps, 0.02, 0.95).astype(np.float32)


def exposed(name: str) -> np.ndarray:
    """The light as `relight` uses it: scaled so a white's brightest camera channel is 1 (module docstring)."""
    power = load_illuminant(name)
    return power / (CAMERA.matrix @ power).max()


# ------------------------------------------------------------------------------------------- identities
def test_relighting_under_the_rendering_light_is_exactly_the_camera_rgb():
    cube = smooth_scene()
    np.testing.assert_array_equal(relight(cube, WL, "E", camera=CAMERA), CAMERA.render(cube))
    np.testing.assert_array_equal(relight(cube, WL, "A", from_="A", camera=CAMERA), CAMERA.render(cube))
    np.testing.assert_array_equal(relight(cube, WL, "e"), CAMERA.render(cube))  # default camera: Nikon 5100


def test_from_divides_the_photo_light_out():
    """A photo under A reconstructs (at best) to radiance s ⊙ L̂_A; relit from A it is the scene under E."""
    cube = smooth_scene().astype(np.float64)
    radiance = cube * exposed("A")
    np.testing.assert_allclose(relight(radiance, WL, "E", from_="A", camera=CAMERA), CAMERA.render(cube), atol=1e-12)
    np.testing.assert_allclose(
        relight(radiance, WL, "FL11", from_="A", camera=CAMERA), relight(cube, WL, "FL11", camera=CAMERA), atol=1e-12
    )


def test_white_is_exposed_to_one_and_keeps_the_cast_unless_balanced():
    white = np.ones((1, 1, WL.size))
    for name in ("E", "A", "FL11", "LED-B1", "D65"):
        raw = relight(white, WL, name, camera=CAMERA)[0, 0]
        assert raw.max() == pytest.approx(1.0) and np.allclose(raw, white_rgb(name, CAMERA))
        np.testing.assert_allclose(relight(white, WL, name, camera=CAMERA, white_balance=True)[0, 0], 1.0, atol=1e-12)
        np.testing.assert_allclose(relight(white, WL, name, output="srgb", white_balance=True)[0, 0], 1.0, atol=1e-3)
    r, g, b = relight(white, WL, "A", camera=CAMERA)[0, 0]
    assert r > g > b  # tungsten is orange to a camera that is not white-balanced
    r, g, b = relight(white, WL, "A", output="srgb")[0, 0]
    assert r > g > b


def test_srgb_under_e_matches_the_preview():
    from uldm.visualize import _encode_srgb, cube_to_srgb

    cube = smooth_scene()
    diff = _encode_srgb(relight(cube, WL, "E", output="srgb")).astype(int) - cube_to_srgb(cube, WL).astype(int)
    assert np.abs(diff).max() <= 1


def test_von_kries_equals_spectral_relighting_for_a_flat_scene():
    flat = np.full((3, 4, WL.size), 0.4)
    for source in ("E", "D65"):
        photo = flat * exposed(source)  # what a perfect reconstruction of the photo under `source` returns
        rgb = CAMERA.render(photo)
        for target in ("A", "FL11", "LED-B1"):
            np.testing.assert_allclose(
                von_kries(rgb, target, from_=source, camera=CAMERA),
                relight(photo, WL, target, from_=source, camera=CAMERA),
                rtol=1e-12,
            )


def test_metamers_split_under_another_light_but_not_for_von_kries():
    """Two spectra with the same RGB under E (they differ by a null-space vector of Φ) differ under A."""
    null = np.linalg.svd(CAMERA.matrix)[2][3:]  # rows spanning the null space
    direction = null[0] / np.abs(null[0]).max()
    pair = np.stack([np.full(WL.size, 0.5), 0.5 + 0.3 * direction])[None]
    rgb = CAMERA.render(pair)
    np.testing.assert_allclose(rgb[0, 0], rgb[0, 1], atol=1e-12)
    spectral = relight(pair, WL, "A", camera=CAMERA)
    naive = von_kries(rgb, "A", camera=CAMERA)
    assert np.abs(spectral[0, 0] - spectral[0, 1]).max() > 1e-3
    np.testing.assert_allclose(naive[0, 0], naive[0, 1], atol=1e-12)


def test_shape_and_camera_errors():
    with pytest.raises(ValueError, match="31 bands"):
        relight(np.ones((2, 2, 30)), WL, "A", camera=CAMERA)
    with pytest.raises(ValueError, match="output"):
        relight(np.ones((2, 2, 31)), WL, "A", output="xyz")
    with pytest.raises(ValueError, match="no power at 400 nm"):
        relight(np.ones((2, 2, 31)), WL, "A", from_=np.r_[0.0, np.ones(30)], camera=CAMERA)


# ---------------------------------------------------------------------------------------------- CIEDE2000
@pytest.mark.parametrize(
    ("lab_a", "lab_b", "expected"),
    [  # Sharma, Wu & Dalal (2005), pairs 1, 2, 7 and 17
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
        ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ],
)
def test_ciede2000_on_sharma_pairs(lab_a, lab_b, expected):
    assert float(delta_e2000(lab_a, lab_b)) == pytest.approx(expected, abs=1e-4)


def test_lab_white_point_is_the_illuminants_white():
    for name in ("E", "A", "LED-B1"):
        white = white_rgb(name, CAMERA)
        np.testing.assert_allclose(camera_rgb_to_lab(white, white, CAMERA), [100.0, 0.0, 0.0], atol=1e-6)


# ------------------------------------------------------------------------------------------ illuminants
def test_names_aliases_and_case():
    names = available_illuminants()
    assert {"D65", "A", "E", "FL2", "FL11", "LED-B1"} <= set(names)
    assert not any(name.startswith("ISO 7589") for name in names)  # their tables stop at 690 nm
    np.testing.assert_array_equal(load_illuminant("F11"), load_illuminant("FL11"))
    np.testing.assert_array_equal(load_illuminant("led-b1"), load_illuminant("LED-B1"))
    np.testing.assert_array_equal(load_illuminant("d65"), load_illuminant("D65"))
    assert load_illuminant("A").shape == (31,)


def test_unknown_illuminant_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown illuminant 'D66'") as info:
        load_illuminant("D66")
    assert "D65" in str(info.value) and "FL11" in str(info.value) and "CSV" in str(info.value)
    with pytest.raises(IlluminantError, match="does not cover"):
        load_illuminant("ISO 7589 Photoflood")


def test_csv_illuminant_is_resampled_and_validated(tmp_path):
    wavelengths = np.arange(380.0, 781.0, 5.0)
    path = tmp_path / "lamp.csv"
    path.write_text("wavelength,power\n" + "".join(f"{w},{w / 10}\n" for w in wavelengths))
    np.testing.assert_allclose(load_illuminant(path), WL / 10)
    np.testing.assert_allclose(load_illuminant(str(path)), WL / 10)
    np.testing.assert_allclose(relight(np.ones((1, 1, 31)), WL, str(path), camera=CAMERA).max(), 1.0)

    short = tmp_path / "short.csv"
    short.write_text("".join(f"{w},1\n" for w in range(420, 701, 10)))
    with pytest.raises(IlluminantError, match=r"short\.csv.*does not cover"):
        load_illuminant(short)
    negative = tmp_path / "negative.csv"
    negative.write_text("".join(f"{w},{-1 if w == 550 else 1}\n" for w in range(400, 701, 10)))
    with pytest.raises(IlluminantError, match=r"negative\.csv.*negative"):
        load_illuminant(negative)
    missing = tmp_path / "nan.csv"
    missing.write_text("".join(f"{w},{'nan' if w == 550 else 1}\n" for w in range(400, 701, 10)))
    with pytest.raises(IlluminantError, match="NaN"):
        load_illuminant(missing)
    with pytest.raises(IlluminantError, match="cannot read"):
        load_illuminant(tmp_path / "absent.csv")


# ------------------------------------------------------------------------------------------ metrics, figure
def test_relight_metrics_reports_every_method_and_illuminant():
    gt = smooth_scene()
    rgb = CAMERA.render(gt)
    rng = np.random.default_rng(1)
    noisy = gt + rng.normal(0, 0.02, gt.shape).astype(np.float32)
    metrics = relight_metrics(noisy, gt, rgb, CAMERA, ["A", "FL11", "E"], baselines={"perfect": gt})
    assert set(metrics) == {"A", "FL11", "E"}
    for rows in metrics.values():
        assert set(rows) == {"reconstruction", "perfect", "von-kries"}
        for row in rows.values():
            assert set(row) == {"de00_mean", "de00_p95", "psnr"}
            assert row["de00_p95"] >= row["de00_mean"] >= 0
    assert metrics["A"]["perfect"]["de00_p95"] == 0 and metrics["A"]["perfect"]["psnr"] == float("inf")
    assert metrics["E"]["von-kries"]["de00_p95"] < 1e-9  # nothing to relight: the input itself
    assert metrics["A"]["von-kries"]["de00_mean"] > 0.1
    assert "von-kries" in relight_table(metrics)
    with pytest.raises(ValueError, match="shape"):
        relight_metrics(noisy[:5], gt, rgb, CAMERA, ["A"])


def test_relight_figure_is_written(tmp_path):
    gt = smooth_scene()
    path = relight_figure(tmp_path / "fig" / "relight.png", gt, gt * 0.95, CAMERA.render(gt), CAMERA)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 300
    assert not list(path.parent.glob(".*tmp*"))  # atomic: no temporary left behind


# ------------------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(20, 235, (10, 14, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_relight_writes_a_png_of_the_input_size(photo, tmp_path, capsys):
    out = tmp_path / "out" / "relit.png"
    assert main(["relight", str(photo), "--to", "A", "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (14, 10) and image.mode == "RGB"
    assert "relit.png" in capsys.readouterr().out
    srgb = tmp_path / "srgb.png"
    assert main(["relight", str(photo), "--to", "F11", "--from", "D65", "-o", str(srgb),
                 "--space", "srgb", "--white-balance"]) == 0
    assert srgb.exists()


def test_cli_relight_under_the_same_light_returns_the_photo(photo, tmp_path):
    out = tmp_path / "same.png"
    # --raw: random colours are often outside the camera's gamut, where physical spectra change the RGB
    assert main(["relight", str(photo), "--to", "E", "-o", str(out), "--raw"]) == 0
    diff = np.asarray(Image.open(out)).astype(int) - np.asarray(Image.open(photo)).astype(int)
    assert np.abs(diff).max() <= 1  # the baseline re-renders to its input RGB; only 8-bit rounding remains


def test_cli_relight_list_and_errors(photo, tmp_path, capsys):
    assert main(["relight", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "D65" in listed and "LED-B1" in listed
    assert main(["relight", str(photo), "-o", str(tmp_path / "x.png")]) == 2
    assert "--to" in capsys.readouterr().err
    assert main(["relight", str(photo), "--to", "D66", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "D66" in err and "D65" in err and not (tmp_path / "x.png").exists()
