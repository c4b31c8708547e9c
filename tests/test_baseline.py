"""Root-polynomial baseline, the shared evaluation loop and the `uldm` command line."""

import json

import numpy as np
import pytest

from uldm import CameraResponse
from uldm.baseline import RootPolynomialRegression, root_polynomial_features
from uldm.cli import main
from uldm.evaluation import evaluate


def test_features_by_hand():
    f = root_polynomial_features(np.array([0.25, 1.0, 0.04]))
    np.testing.assert_allclose(f, [0.25, 1.0, 0.04, 0.5, 0.2, 0.1, 1.0])
    # root-polynomial terms scale with exposure like the linear ones
    np.testing.assert_allclose(root_polynomial_features(np.array([0.5, 2.0, 0.08]))[:6], 2 * f[:6])


def test_fit_recovers_spectra_that_lie_in_the_feature_span():
    camera = CameraResponse.from_preset("nikon5100")
    rng = np.random.default_rng(0)
    true_weights = rng.random((7, 31)) * 0.1
    rgb = rng.random((500, 3))
    spectra = root_polynomial_features(rgb) @ true_weights
    model = RootPolynomialRegression.fit(rgb, spectra, camera)
    np.testing.assert_allclose(model.weights, true_weights, atol=1e-10)


def test_save_load_round_trip(tmp_path):
    camera = CameraResponse.from_preset("canon-5d-mark-ii")
    model = RootPolynomialRegression(np.random.default_rng(1).random((7, 31)), camera)
    back = RootPolynomialRegression.load(model.save(tmp_path / "b.npz"))
    np.testing.assert_array_equal(back.weights, model.weights)
    assert back.camera == camera
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz"):
        RootPolynomialRegression.load(tmp_path / "junk.npz")


def test_evaluate_scores_a_perfect_model_perfectly(tiny_cave_root):
    from uldm.data import list_scenes, read_scene

    camera = CameraResponse.from_preset("nikon5100")
    scenes = list_scenes(tiny_cave_root, "cave")
    truth = {str(camera.render(read_scene(p).cube).tobytes()): read_scene(p).cube for p in scenes}
    oracle = lambda rgb: truth[str(rgb.tobytes())]  # noqa: E731 - looks the ground truth up by its RGB
    result = evaluate(oracle, scenes, camera, format="cave", progress=False)
    assert set(result.per_scene) == {read_scene(p).name for p in scenes}
    assert all(row["rmse"] == 0 and row["sam"] < 1e-3 for row in result.per_scene.values())


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "baseline" in out and "info" in out


def test_cli_baseline_fit_and_evaluate(tiny_cave_root, tmp_path, capsys):
    model_path = tmp_path / "baseline.npz"
    assert main(["baseline", "fit", "--data", str(tiny_cave_root), "--split", "all", "-o", str(model_path)]) == 0
    report = tmp_path / "report.json"
    assert main(["baseline", "evaluate", "--model", str(model_path), "--data", str(tiny_cave_root),
                 "--split", "all", "--json", str(report), "--save-dir", str(tmp_path / "cubes")]) == 0
    data = json.loads(report.read_text())
    assert data["mean"]["psnr"] > 10 and set(data["mean"]) >= {"mrae", "rmse", "psnr", "sam", "seconds"}
    assert len(list((tmp_path / "cubes").glob("*.h5"))) == len(data["per_scene"])
    assert "mean" in capsys.readouterr().out


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["baseline", "evaluate", "--model", str(tmp_path / "none.npz"), "--data", str(tmp_path)]) == 2
    assert "none.npz" in capsys.readouterr().err


@pytest.mark.real_data
def test_baseline_on_real_cave_val(cave_root, tmp_path):
    """The classical reference (METHOD.md: 32.9 dB, 13.2 degrees); a loose band catches a broken fit."""
    from uldm.data import cave_split

    camera = CameraResponse.from_preset("nikon5100")
    split = cave_split(cave_root)
    model = RootPolynomialRegression.fit_scenes(split["train"], camera, format="cave")
    result = evaluate(model, split["val"], camera, format="cave", progress=False)
    assert 30 < result.mean["psnr"] < 37
    assert 8 < result.mean["sam"] < 18
    assert result.mean["rgb_error"] < 0.1


def test_cli_reconstruct_writes_cube_and_previews(tmp_path, tiny_cave_root):
    from PIL import Image

    from uldm.baseline import RootPolynomialRegression
    from uldm.images import save_png16
    from uldm.io import load_cube, load_cube_attrs

    camera = CameraResponse.from_preset("nikon5100")
    model_path = RootPolynomialRegression(np.random.default_rng(0).random((7, 31)) * 0.2, camera).save(tmp_path / "m.npz")
    images = tmp_path / "images"
    save_png16(images / "a.png", np.random.default_rng(1).random((12, 10, 3)))
    Image.fromarray(np.full((8, 9, 3), 128, np.uint8)).save(images / "b.jpg")
    out = tmp_path / "out"
    assert main(["reconstruct", str(images), "-o", str(out), "--checkpoint", str(model_path), "--preview"]) == 0
    cube, wavelengths = load_cube(out / "a.h5")
    assert cube.shape == (12, 10, 31) and len(wavelengths) == 31
    assert load_cube_attrs(out / "a.h5")["camera_name"] == "Nikon 5100 (NPL)"
    assert (out / "b.h5").exists() and (out / "a_preview.png").exists() and (out / "a_spectra.png").exists()


def test_cli_reconstruct_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "nope.png"), "-o", str(tmp_path / "out")]) == 2
    assert "nope.png" in capsys.readouterr().err
