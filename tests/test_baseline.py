"""Root-polynomial baseline, the shared evaluation loop and the `uldm` command line."""

import json

import numpy as np
import pytest

from uldm import CameraResponse
from uldm.baseline import RootPolynomialRegression, root_polynomial_features
from uldm.cli import main
from uldm.data import cave_split
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


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_features_are_colour_sciences_root_polynomial_expansion(degree):
    from colour.characterisation import polynomial_expansion_Finlayson2015

    from uldm.baseline import feature_names

    rgb = np.random.default_rng(degree).random((40, 3))
    features = root_polynomial_features(rgb, degree)
    expected = polynomial_expansion_Finlayson2015(rgb, degree, root_polynomial_expansion=True)
    np.testing.assert_allclose(features[:, :-1], expected, rtol=1e-12)
    np.testing.assert_array_equal(features[:, -1], 1.0)
    assert len(feature_names(degree)) == features.shape[1] == {1: 4, 2: 7, 3: 14, 4: 23}[degree]
    # every term scales with exposure (the constant aside), at every degree
    np.testing.assert_allclose(root_polynomial_features(3 * rgb, degree)[:, :-1], 3 * features[:, :-1], rtol=1e-12)
    import torch

    as_tensor = root_polynomial_features(torch.from_numpy(rgb).float(), degree)
    assert as_tensor.dtype == torch.float32
    np.testing.assert_allclose(as_tensor.numpy(), features, rtol=1e-5)


def test_degrees_nest_save_and_load(tmp_path, tiny_cave_root, capsys):
    from uldm.baseline import scene_pixels
    from uldm.data import cave_split

    camera = CameraResponse.from_preset("nikon5100")
    rgb, spectra = scene_pixels(cave_split(tiny_cave_root)["train"], camera)
    fits = {degree: RootPolynomialRegression.fit(rgb, spectra, camera, degree) for degree in (1, 2, 3, 4)}
    # each degree's terms contain the lower degree's, so its training error can only fall
    errors = [((fits[d](rgb[None])[0] - spectra) ** 2).mean() for d in (1, 2, 3, 4)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errors, errors[1:])) and errors[3] < errors[0], errors
    back = RootPolynomialRegression.load(fits[3].save(tmp_path / "d3.npz"))
    assert back.degree == 3 and np.array_equal(back.weights, fits[3].weights)
    with pytest.raises(ValueError, match="5 rows match no root-polynomial degree"):
        RootPolynomialRegression(np.zeros((5, 31)), camera)
    with pytest.raises(ValueError, match="degree must be 1, 2, 3 or 4"):
        root_polynomial_features(rgb, 5)
    assert main(["baseline", "fit", "--data", str(tiny_cave_root), "--degree", "3", "-o", str(tmp_path / "c.npz")]) == 0
    assert RootPolynomialRegression.load(tmp_path / "c.npz").degree == 3 and "fitted degree 3" in capsys.readouterr().out


def test_classical_regressions_benchmark_prints_a_row_per_degree(load_benchmark, tiny_cave_root, tmp_path, capsys):
    bench = load_benchmark("classical_regressions")
    bench.main(["--data", str(tiny_cave_root), "--degrees", "1", "2", "--json", str(tmp_path / "train.json")])
    table = capsys.readouterr().out
    assert "degree 1" in table and "degree 2" in table and "PSNR BALLOONS_MS" in table and "fitted on CAVE train" in table
    # fitted on the scored scenes themselves, each degree does at least as well in squared error as fitted elsewhere
    bench.main(["--data", str(tiny_cave_root), "--degrees", "1", "2", "--fit-on", "val", "--json", str(tmp_path / "val.json")])
    assert "fitted on CAVE val" in capsys.readouterr().out
    train, val = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("train", "val"))
    for degree in ("degree 1", "degree 2"):
        assert val[degree]["rmse"] <= train[degree]["rmse"] * 1.0001


def test_classical_regressions_on_real_cave_val(load_benchmark, cave_root):
    """The figures METHOD.md section 6 quotes for CAVE val: linear 33.2 dB / 13.4 deg, degree 2 32.9 dB / 13.2 deg."""
    rows = load_benchmark("classical_regressions").compare_degrees(cave_root, CameraResponse.from_preset("nikon5100"),
                                                                    [1, 2])
    assert rows["degree 1"]["psnr"] == pytest.approx(33.2, abs=0.05) and rows["degree 1"]["sam"] == pytest.approx(13.4, abs=0.05)
    assert rows["degree 2"]["psnr"] == pytest.approx(32.9, abs=0.05) and rows["degree 2"]["sam"] == pytest.approx(13.2, abs=0.05)


def test_geometric_ensemble_inverts_each_transform(load_benchmark, tiny_cave_root, tmp_path, capsys):
    bench = load_benchmark("geometric_ensemble")
    image = np.random.default_rng(0).random((5, 7, 3))
    for k in range(8):
        assert bench.dihedral(image, k).shape == ((7, 5, 3) if k % 2 else (5, 7, 3))
        np.testing.assert_array_equal(bench.undo_dihedral(bench.dihedral(image, k), k), image)
    assert len({bench.dihedral(image[:5, :5], k).tobytes() for k in range(8)}) == 8  # 8 different transforms
    # a per-pixel model is unchanged by the ensemble; one that looks at positions is not
    camera = CameraResponse.from_preset("nikon5100")
    model = RootPolynomialRegression(np.random.default_rng(1).random((7, 31)), camera)
    np.testing.assert_allclose(bench.GeometricEnsemble(model, 8)(image), model(image), rtol=1e-6)
    ramp = lambda rgb: rgb[..., :1] * np.arange(rgb.shape[1])[None, :, None] * np.ones(31)
    assert not np.allclose(bench.GeometricEnsemble(ramp, 2)(image[:5, :5]), ramp(image[:5, :5]))
    with pytest.raises(ValueError, match="1 to 8"):
        bench.GeometricEnsemble(model, 9)
    # the script end to end, on a fitted baseline file
    path = RootPolynomialRegression.fit_scenes(
        [tiny_cave_root / "cd_ms", tiny_cave_root / "watercolors_ms"], camera).save(tmp_path / "b.npz")
    bench.main(["--checkpoint", str(path), "--data", str(tiny_cave_root), "--members", "1", "2"])
    assert "2 members" in capsys.readouterr().out


def test_model_ensemble_scores_the_mean_of_memoised_answers(load_benchmark, tiny_cave_root, tmp_path, capsys):
    bench = load_benchmark("model_ensemble")
    calls = []
    member = bench.memoised(lambda rgb: calls.append(1) or rgb.sum(-1, keepdims=True) * np.ones(31))
    image = np.random.default_rng(0).random((4, 4, 3))
    np.testing.assert_array_equal(member(image), member(image.copy()))
    assert len(calls) == 1  # the second call, on equal pixels, is answered from memory
    np.testing.assert_allclose(bench.average_of([lambda rgb: np.zeros(2), lambda rgb: np.full(2, 4.0)])(image), [2, 2])
    assert bench.ensembles(["a", "b"]) == [("a",), ("b",), ("a", "b")]
    assert bench.ensembles(["a", "b", "c"])[-1] == ("a", "b", "c") and len(bench.ensembles(["a", "b", "c"])) == 7
    # the script end to end on two fitted regressions: the pair's row is the score of the averaged cubes
    camera = CameraResponse.from_preset("nikon5100")
    train = [tiny_cave_root / "cd_ms", tiny_cave_root / "watercolors_ms"]
    paths = [str(RootPolynomialRegression.fit_scenes(train, camera, degree=degree).save(tmp_path / f"d{degree}.npz"))
             for degree in (1, 2)]
    bench.main([*paths, "--data", str(tiny_cave_root), "--json", str(tmp_path / "e.json")])
    rows = json.loads((tmp_path / "e.json").read_text())
    assert list(rows) == [paths[0], paths[1], f"{paths[0]} + {paths[1]}"]
    models = [RootPolynomialRegression.load(path) for path in paths]
    expected = evaluate(lambda rgb: (models[0](rgb) + models[1](rgb)) / 2, cave_split(tiny_cave_root)["val"], camera,
                        progress=False).mean
    assert rows[f"{paths[0]} + {paths[1]}"]["psnr"] == pytest.approx(expected["psnr"], abs=1e-4)
    assert rows[paths[0]]["psnr"] != pytest.approx(rows[paths[1]]["psnr"], abs=1e-4)  # two different models
    with pytest.raises(SystemExit):
        bench.main([paths[0], paths[0], "--data", str(tiny_cave_root)])  # one model twice is no ensemble
    other = RootPolynomialRegression.fit_scenes(train, CameraResponse.from_preset("cie1931")).save(tmp_path / "x.npz")
    with pytest.raises(SystemExit):
        bench.main([paths[0], str(other), "--data", str(tiny_cave_root)])  # answers for different cameras
    assert "different cameras" in capsys.readouterr().err


def test_a_fit_on_too_few_or_too_alike_pixels_warns():
    from uldm.baseline import fit_root_polynomial

    rgb = np.random.default_rng(0).random((4, 3))  # degree 2 has 7 features (with the constant)
    with pytest.warns(UserWarning, match="underdetermined"):
        fit_root_polynomial(rgb, np.ones((4, 31)))
    with pytest.warns(UserWarning, match="underdetermined"):
        fit_root_polynomial(np.tile(rgb[:1], (100, 1)), np.ones((100, 31)))  # 100 copies of one colour
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_root_polynomial(np.random.default_rng(1).random((100, 3)), np.ones((100, 31)))
