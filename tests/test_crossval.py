"""The cross-validation benchmark: its folds, its paired statistics and its resumable runs (on a tiny data set)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

SPLITS = Path(__file__).resolve().parent.parent / "stages" / "configs" / "splits"


def test_the_five_folds_partition_the_25_scenes():
    from uldm.data.splits import read_split_file

    vals = [read_split_file(SPLITS / f"cv5_fold{k}_val.txt") for k in range(5)]
    trains = [read_split_file(SPLITS / f"cv5_fold{k}_train.txt") for k in range(5)]
    every = sorted(name for val in vals for name in val)
    assert len(every) == 25 == len(set(every))
    for val, train in zip(vals, trains):
        assert len(val) == 5 and len(train) == 20 and not set(val) & set(train) and sorted(val + train) == every


def test_spearman_and_paired_differences(load_benchmark):
    crossval = load_benchmark("crossval")
    x = torch.rand(500, dtype=torch.float64)
    assert crossval.spearman(x, x ** 3) == pytest.approx(1.0)
    assert crossval.spearman(x, -x) == pytest.approx(-1.0)
    scores = {"a": {"psnr": 31.0}, "b": {"psnr": 29.0}, "c": {"psnr": 30.5}}
    base = {"a": {"psnr": 30.0}, "b": {"psnr": 30.0}, "c": {"psnr": 30.0}}
    paired = crossval.paired_psnr(scores, base, "scenes_won")
    assert paired["scenes_won"] == 2 and paired["scenes_worse"] == 1
    assert paired["mean_psnr_difference"] == pytest.approx(0.5 / 3) and paired["worst_psnr_difference"] == -1.0


def test_a_fold_is_scored_physical_and_raw_then_kept_and_rebuilt_from_its_record(load_benchmark, tmp_path,
                                                                                tiny_cave_root, monkeypatch):
    """Folds of three tiny scenes: a scene mixture fold is fitted, scored both ways and written; a fold written
    before the raw scoring existed is scored again from its recorded gate (the same scores, no gate search)."""
    crossval = load_benchmark("crossval")
    from uldm.data import list_scenes

    scenes = list_scenes(tiny_cave_root, "cave")
    monkeypatch.setattr(crossval, "fold_scenes", lambda root, fold: (scenes, scenes[:1]))
    monkeypatch.setattr(crossval, "RESULTS", tmp_path)
    camera = crossval.CameraResponse.from_preset("nikon5100")
    first = crossval.fold_results("scene-mixture-nocontext-sharp", tiny_cave_root, camera, [0], False, False)[0]
    assert set(first["per_scene"]) == set(first["per_scene_raw"]) == {scenes[0].name}
    assert "leave_scene_out_log_mse" in first["record"]
    path = tmp_path / "crossval" / "scene-mixture-nocontext-sharp" / "fold0.json"
    old = json.loads(path.read_text())
    del old["per_scene_raw"]
    path.write_text(json.dumps(old))
    import uldm.scene_prior_fit as scene_prior_fit

    monkeypatch.setattr(scene_prior_fit, "fit_gate", lambda *a, **k: pytest.fail("the kept gate is fitted again"))
    again = crossval.fold_results("scene-mixture-nocontext-sharp", tiny_cave_root, camera, [0], False, False)[0]
    assert again["record"]["gate_from_record"] and again["record"]["gate"] == first["record"]["gate"]
    for scene, row in first["per_scene"].items():
        np.testing.assert_allclose(again["per_scene"][scene]["psnr"], row["psnr"], rtol=1e-6)


def test_the_uncertainty_scores_spread_against_error_and_names_the_folds_it_could_not_load(load_benchmark,
                                                                                            tiny_cave_root,
                                                                                            monkeypatch):
    """A fake pipeline recipe whose spread is its very error (Spearman 1) and whose fold 1 is gone."""
    crossval = load_benchmark("crossval")
    from uldm.data import list_scenes, read_scene

    scenes = list_scenes(tiny_cave_root, "cave")
    camera = crossval.CameraResponse.from_preset("nikon5100")
    cubes = {}
    for path in scenes:
        cube = read_scene(path, format="cave", grid=camera.grid).cube
        cubes[np.asarray(camera.render(cube)).tobytes()] = cube

    class SpreadIsTheError:
        ensemble = 1

        def predict(self, rgb):
            cube = cubes[np.asarray(rgb).tobytes()]
            mean = cube * (1 + np.random.default_rng(0).normal(0, 0.3, cube.shape[:2] + (1,)))
            return mean, np.repeat(np.sqrt(((mean - cube) ** 2).mean(-1, keepdims=True)), cube.shape[-1], -1)

    def fit(train, camera, fold, kept=None, *, recipe, train_missing):
        if fold == 1:
            raise FileNotFoundError(f"fold {fold}'s pipeline is gone")
        return SpreadIsTheError(), {}

    monkeypatch.setitem(crossval.RECIPES, "spread-is-the-error", fit)
    monkeypatch.setattr(crossval, "fold_scenes", lambda root, fold: (scenes, [scenes[fold % len(scenes)]]))
    result = crossval.uncertainty_calibration("spread-is-the-error", tiny_cave_root, camera, 4)
    assert result["missing_folds"] == [1] and result["ensemble_size"] == 4
    assert result["scenes"] == len(result["spearman_per_scene"]) == len(scenes)  # folds 0, 2, 3, 4 of three scenes
    assert result["mean_spearman"] == pytest.approx(1.0) and result["pooled_spearman"] == pytest.approx(1.0)


def test_each_folds_inner_split_holds_out_5_of_its_training_scenes():
    from uldm.data.splits import read_split_file

    for k in range(5):
        train = set(read_split_file(SPLITS / f"cv5_fold{k}_train.txt"))
        inner_val = set(read_split_file(SPLITS / f"cv5_fold{k}_inner_val.txt"))
        inner_train = set(read_split_file(SPLITS / f"cv5_fold{k}_inner_train.txt"))
        assert len(inner_val) == 5 and inner_val <= train and inner_train == train - inner_val


def test_the_residual_weight_is_chosen_on_the_inner_scenes_and_kept_in_the_fold_record(load_benchmark, tiny_cave_root,
                                                                                      monkeypatch):
    """Fake pipelines whose inner score peaks at weight 0.5 (0.25 and 0.75 tie below it): 0.5 is set on the fold's
    own pipeline, the inner scores are recorded, and a kept record sets the weight with no inner model."""
    crossval = load_benchmark("crossval")
    from uldm.data import list_scenes

    scenes = list_scenes(tiny_cave_root, "cave")
    calls = []

    class FakePipeline:
        def __init__(self):
            self.config = {}

        def register_to_config(self, **kwargs):
            self.config.update(kwargs)

    def recipe(name):
        def fit(train, camera, fold, kept=None, *, recipe, train_missing):
            calls.append(name)
            model = type("Model", (), {})()
            model.pipeline = FakePipeline()
            return model, {"pipeline": name}
        return fit

    def fake_evaluate(model, val, camera, **kwargs):
        weight = model.pipeline.config["code_residual_weight"]
        return type("Scores", (), {"per_scene": {p.name: {"psnr": 30 - abs(weight - 0.5)} for p in val}})()

    monkeypatch.setitem(crossval.RECIPES, "fold-pipeline", recipe("fold-pipeline"))
    monkeypatch.setitem(crossval.RECIPES, "inner-pipeline", recipe("inner-pipeline"))
    monkeypatch.setattr(crossval, "evaluate", fake_evaluate)
    monkeypatch.setattr(crossval, "inner_scenes", lambda train, fold: train[:2])
    fit = crossval.weighted_residual("fold-pipeline", "inner-pipeline")
    camera = crossval.CameraResponse.from_preset("nikon5100")
    model, record = fit(scenes, camera, 0, recipe="weighted", train_missing=False)
    assert model.pipeline.config["code_residual_weight"] == 0.5 == record["code_residual_weight"]
    assert record["inner_psnr"] == {"0": 29.5, "0.25": 29.75, "0.5": 30.0, "0.75": 29.75, "1": 29.5}
    assert calls == ["inner-pipeline", "fold-pipeline"]
    tie = {"0": 29.0, "0.25": 29.9, "0.5": 29.5, "0.75": 29.9, "1": 28.0}
    model, record = fit(scenes, camera, 0, {**record, "inner_psnr": tie}, recipe="weighted", train_missing=False)
    assert record["code_residual_weight"] == 0.25 == model.pipeline.config["code_residual_weight"]  # ties: the smaller
    assert calls == ["inner-pipeline", "fold-pipeline", "fold-pipeline"]
