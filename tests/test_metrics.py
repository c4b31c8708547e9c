"""Metrics against values worked out by hand on tiny cubes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uldm.metrics import (
    central_crop,
    evaluate_cube,
    format_table,
    mean_metrics,
    mrae,
    psnr,
    rmse,
    sam,
    ssim,
)


def cube(*spectra: list[float]) -> np.ndarray:
    """An N x 1 x B cube from N spectra."""
    return np.asarray(spectra, dtype=np.float64)[:, None, :]


# ----------------------------------------------------------------------------------------------- MRAE
def test_mrae_without_eps_is_the_ntire_formula():
    gt = cube([0.5, 0.25])
    pred = cube([0.6, 0.2])
    # |0.1| / 0.5 = 0.2 and |0.05| / 0.25 = 0.2
    assert mrae(pred, gt, eps=0) == pytest.approx(0.2)


def test_mrae_eps_keeps_zero_pixels_finite():
    gt = cube([0.0, 1.0])
    pred = cube([0.001, 1.0])
    # 0.001 / (0 + 0.001) = 1 and 0 / 1.001 = 0
    assert mrae(pred, gt) == pytest.approx(0.5)
    assert math.isinf(mrae(pred, gt, eps=0))


def test_mrae_rejects_negative_eps():
    with pytest.raises(ValueError, match="eps"):
        mrae(cube([1.0]), cube([1.0]), eps=-1)


# ------------------------------------------------------------------------------------------ RMSE, PSNR
def test_rmse_by_hand_without_clamping():
    gt = cube([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    pred = cube([0.3, 0.0, 0.0], [0.0, -0.3, 3.0])
    # squared errors 0.09, 0.09, 9 over 6 elements
    assert rmse(pred, gt) == pytest.approx(math.sqrt((0.09 + 0.09 + 9.0) / 6))


def test_psnr_is_20_db_for_mse_0_01():
    gt = cube([0.5, 0.5])
    pred = cube([0.6, 0.4])  # every error 0.1 -> mse 0.01
    assert psnr(pred, gt) == pytest.approx(20.0)


def test_psnr_clamps_to_unit_range_and_is_inf_when_identical():
    gt = cube([1.0, 0.0])
    assert psnr(cube([1.7, -0.4]), gt) == math.inf  # both clamp to the ground truth
    assert psnr(gt, gt) == math.inf
    # 1.5 clamps to 1: errors 0 and 0.1 -> mse 0.005
    assert psnr(cube([1.5, 0.1]), gt) == pytest.approx(10 * math.log10(1 / 0.005))


# ------------------------------------------------------------------------------------------------- SAM
def test_sam_orthogonal_and_45_degrees():
    gt = cube([1.0, 0.0], [1.0, 0.0])
    pred = cube([0.0, 2.0], [3.0, 3.0])  # 90 and 45 degrees
    assert sam(pred[:1], gt[:1]) == pytest.approx(90.0)
    assert sam(pred[1:], gt[1:]) == pytest.approx(45.0)
    assert sam(pred, gt) == pytest.approx(67.5)


def test_sam_is_scale_invariant_and_zero_for_parallel_spectra():
    gt = cube([0.1, 0.2, 0.3])
    assert sam(gt * 7.0, gt) == pytest.approx(0.0, abs=1e-5)


def test_sam_zero_spectrum_is_90_degrees_not_nan():
    assert sam(cube([0.0, 0.0, 0.0]), cube([0.2, 0.3, 0.4])) == pytest.approx(90.0)
    assert sam(cube([0.0, 0.0]), cube([0.0, 0.0])) == pytest.approx(90.0)


def test_sam_channel_axis():
    gt = cube([1.0, 0.0], [1.0, 0.0])
    pred = cube([0.0, 2.0], [3.0, 3.0])
    bands_first = lambda x: np.moveaxis(x, -1, 0)  # noqa: E731
    assert sam(bands_first(pred), bands_first(gt), channel_axis=0) == pytest.approx(67.5)


# ------------------------------------------------------------------------------------------------ SSIM
def test_ssim_identical_is_one_and_different_is_less():
    rng = np.random.default_rng(0)
    gt = rng.random((16, 14, 3))
    assert ssim(gt, gt) == pytest.approx(1.0)
    noisy = ssim(np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1), gt)
    unrelated = ssim(rng.random(gt.shape), gt)
    assert unrelated < 0.2 < noisy < 0.99


def test_ssim_matches_the_formula_on_a_single_window():
    rng = np.random.default_rng(1)
    x, y = rng.random((11, 11, 1)), rng.random((11, 11, 1))
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    a, b = x[..., 0], y[..., 0]
    mx, my = (w * a).sum(), (w * b).sum()
    vx, vy = (w * a * a).sum() - mx**2, (w * b * b).sum() - my**2
    cov = (w * a * b).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(x, y) == pytest.approx(expected)


def test_ssim_rejects_small_images():
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((10, 20, 2)), np.zeros((10, 20, 2)))


# ----------------------------------------------------------------------------------- numpy and torch
def test_numpy_and_torch_agree_and_inputs_are_untouched():
    rng = np.random.default_rng(2)
    pred, gt = rng.random((12, 13, 4)), rng.random((12, 13, 4)) + 0.1
    pred[0, 0] = [1.5, -0.2, 0.0, 0.0]  # out of range values must survive untouched
    pred_before = pred.copy()
    tp, tg = torch.tensor(pred, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32)
    tp_before = tp.clone()
    from_numpy = evaluate_cube(pred, gt, with_ssim=True)
    from_torch = evaluate_cube(tp, tg, with_ssim=True)
    for key in from_numpy:
        assert from_torch[key] == pytest.approx(from_numpy[key], rel=1e-5), key
        assert isinstance(from_torch[key], float)
    assert np.array_equal(pred, pred_before)
    assert torch.equal(tp, tp_before)


def test_read_only_numpy_input_is_accepted():
    gt = cube([0.5, 0.5])
    gt.setflags(write=False)
    assert psnr(cube([0.6, 0.4]), gt) == pytest.approx(20.0)


# ------------------------------------------------------------------------------------------------ crop
def test_central_crop_shapes_for_any_channel_axis():
    hwb = np.zeros((300, 280, 31))
    assert central_crop(hwb, 128).shape == (44, 24, 31)
    assert central_crop(torch.zeros(31, 300, 280), 128, channel_axis=0).shape == (31, 44, 24)
    assert central_crop(hwb, 0) is hwb
    marked = np.arange(5 * 5).reshape(5, 5, 1)
    assert central_crop(marked, 2)[0, 0, 0] == 12  # the centre pixel


def test_central_crop_refuses_to_remove_everything():
    with pytest.raises(ValueError, match="leaves nothing"):
        central_crop(np.zeros((256, 400, 3)), 128)
    with pytest.raises(ValueError, match=">= 0"):
        central_crop(np.zeros((8, 8, 3)), -1)


# -------------------------------------------------------------------------------------- evaluate_cube
def test_evaluate_cube_keys_and_crop():
    gt = np.full((6, 6, 2), 0.5)
    pred = gt.copy()
    pred[0] = 0.9  # only the border row is wrong
    scores = evaluate_cube(pred, gt, crop=1)
    assert list(scores) == ["mrae", "rmse", "psnr", "sam"]
    assert scores["rmse"] == 0.0 and scores["psnr"] == math.inf
    assert "ssim" in evaluate_cube(np.zeros((11, 11, 2)), np.zeros((11, 11, 2)), with_ssim=True)


def test_evaluate_cube_rejects_mismatched_shapes_naming_both():
    with pytest.raises(ValueError, match=r"\(4, 4, 31\).*\(4, 4, 30\)"):
        evaluate_cube(np.zeros((4, 4, 31)), np.zeros((4, 4, 30)))


def test_evaluate_cube_rejects_nan():
    pred = np.zeros((4, 4, 3))
    pred[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="prediction contains 1 NaN"):
        evaluate_cube(pred, np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="ground truth contains 1 NaN"):
        evaluate_cube(np.zeros((4, 4, 3)), pred)


# ------------------------------------------------------------------------------------- mean and table
def test_mean_metrics_averages_and_skips_infinite_psnr():
    rows = [
        {"mrae": 0.1, "psnr": 30.0, "seconds": 2.0},
        {"mrae": 0.3, "psnr": math.inf},
        {"mrae": 0.2, "psnr": 40.0},
    ]
    rows_before = [dict(r) for r in rows]
    mean = mean_metrics(rows)
    assert mean == pytest.approx({"mrae": 0.2, "psnr": 35.0, "seconds": 2.0})
    assert rows == rows_before
    assert mean_metrics([{"psnr": math.inf}])["psnr"] == math.inf
    with pytest.raises(ValueError, match="empty"):
        mean_metrics([])


def test_format_table_has_a_row_per_scene_and_a_mean():
    table = format_table({
        "balloons": {"mrae": 0.1, "rmse": 0.02, "psnr": 30.0, "sam": 5.0, "seconds": 1.5},
        "beads": {"mrae": 0.3, "rmse": 0.04, "psnr": 20.0, "sam": 7.0, "seconds": 2.5},
    })
    lines = table.splitlines()
    assert lines[0].split() == ["scene", "MRAE", "RMSE", "PSNR", "SAM", "SECONDS"]
    assert lines[2].split() == ["balloons", "0.1000", "0.0200", "30.00", "5.00", "1.5"]
    assert lines[-1].split() == ["mean", "0.2000", "0.0300", "25.00", "6.00", "2"]
    assert len(lines) == 6  # header, rule, two scenes, rule, mean


def test_format_table_can_compare_models_without_a_mean_row():
    from uldm.metrics import format_table

    table = format_table({"a": {"psnr": 30.0}, "b": {"psnr": 40.0}}, first_column="model", mean_row=False)
    assert table.splitlines()[0].startswith("model") and "mean" not in table


def test_evaluation_row_takes_means_and_per_scene_columns():
    from uldm.evaluation import ROW_KEYS, EvaluationResult

    result = EvaluationResult({"a": dict.fromkeys((*ROW_KEYS, "seconds"), 1.0) | {"psnr": 30.0},
                               "b": dict.fromkeys((*ROW_KEYS, "seconds"), 3.0) | {"psnr": 40.0}})
    assert result.row() == {"mrae": 2.0, "rmse": 2.0, "psnr": 35.0, "sam": 2.0, "rgb_error": 2.0}
    assert result.row(("psnr", "seconds"), per_scene="psnr") == {"psnr": 35.0, "seconds": 2.0, "psnr a": 30.0,
                                                                  "psnr b": 40.0}
