"""Tests of bonect.image_metrics against values worked out by hand, and SSIM against SynthRAD."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from skimage.metrics import structural_similarity
from skimage.util import crop

from bonect import image_metrics as metrics
from bonect.image_metrics import (
    BONE_THRESHOLDS,
    bone_scores,
    mae,
    mae_body,
    mean_error,
    mse,
    pearson_r,
    psnr,
    ssim,
)

# A 1×3×3 pair used by several tests. In the bone window [-500, 1500]:
#   ct  clipped: -500    0  100 | 1500 1500  400 |  800 -500   0
#   sct clipped: -500   50  100 | 1500 1000  600 |  800 -500 200
#   sct - ct   :    0   50    0 |    0 -500  200 |    0    0 200
# The 3000 vs 1500 voxel and the -1000 vs -500 voxel contribute 0 after clipping.
CT = np.array([[[-1000, 0, 100], [1500, 1500, 400], [800, -500, 0]]], dtype=np.int16)
SCT = np.array([[[-500, 50, 100], [3000, 1000, 600], [800, -800, 200]]], dtype=np.float32)


def _full(value: float, shape: tuple[int, ...] = (2, 2, 2)) -> npt.NDArray[np.float64]:
    return np.full(shape, value, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# MAE, MSE, R in the bone window


def test_mae_clips_to_bone_window() -> None:
    # |diffs| = 0 + 50 + 0 + 0 + 500 + 200 + 0 + 0 + 200 = 950 over 9 voxels
    assert mae(SCT, CT) == pytest.approx(950 / 9)


def test_mean_error_is_signed_and_clips_to_bone_window() -> None:
    # sct - ct = 50 - 500 + 200 + 200 = -50 over 9 voxels: too low on average
    assert mean_error(SCT, CT) == pytest.approx(-50 / 9)
    assert mean_error(CT, SCT) == pytest.approx(50 / 9)


def test_mse_clips_to_bone_window() -> None:
    # squares: 50² + 500² + 200² + 200² = 2500 + 250000 + 40000 + 40000 = 332500
    assert mse(SCT, CT) == pytest.approx(332500 / 9)


def test_above_window_voxel_contributes_nothing() -> None:
    assert mae(_full(3000), _full(1500)) == 0.0
    assert mse(_full(3000), _full(1500)) == 0.0
    assert mae(_full(-1000), _full(-500)) == 0.0


def test_mae_and_mse_with_mask() -> None:
    # Keep only row 1: diffs 0, -500, 200 -> MAE 700/3, MSE 290000/3
    mask = np.zeros(CT.shape, dtype=bool)
    mask[0, 1, :] = True
    assert mae(SCT, CT, mask=mask) == pytest.approx(700 / 3)
    assert mse(SCT, CT, mask=mask) == pytest.approx(290000 / 3)
    # A non-boolean mask works too: non-zero means "evaluate".
    assert mae(SCT, CT, mask=mask.astype(np.uint8) * 7) == pytest.approx(700 / 3)


def test_mask_hides_the_errors() -> None:
    mask = np.clip(CT, -500, 1500) == np.clip(SCT, -500, 1500)
    assert mae(SCT, CT, mask=mask) == 0.0


def test_pearson_matches_corrcoef_after_clipping() -> None:
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1200, 2500, size=(4, 5, 6))
    sct = ct + rng.normal(0, 300, size=ct.shape)
    expected = np.corrcoef(np.clip(sct, -500, 1500).ravel(), np.clip(ct, -500, 1500).ravel())
    assert pearson_r(sct, ct) == pytest.approx(expected[0, 1], rel=1e-12)
    # On the hand-made pair as well
    expected = np.corrcoef(np.clip(SCT, -500, 1500).ravel(), np.clip(CT, -500, 1500).ravel())
    assert pearson_r(SCT, CT) == pytest.approx(expected[0, 1], rel=1e-12)


def test_pearson_with_mask_matches_corrcoef() -> None:
    rng = np.random.default_rng(1)
    ct = rng.uniform(-400, 1400, size=(3, 4, 5))
    sct = 0.5 * ct + rng.normal(0, 100, size=ct.shape)
    mask = rng.random(ct.shape) > 0.4
    expected = np.corrcoef(sct[mask], ct[mask])[0, 1]
    assert pearson_r(sct, ct, mask=mask) == pytest.approx(expected, rel=1e-12)


def test_pearson_perfect_and_anti() -> None:
    ct = np.array([[[0.0, 100.0, 200.0]]])
    assert pearson_r(2 * ct + 10, ct) == pytest.approx(1.0)
    assert pearson_r(-ct, ct) == pytest.approx(-1.0)


def test_pearson_of_constant_image_is_nan() -> None:
    ct = np.array([[[0.0, 100.0, 200.0]]])
    assert math.isnan(pearson_r(np.full_like(ct, 0.1), ct))
    # Constant after clipping: everything at or above 1500
    assert math.isnan(pearson_r(ct, np.array([[[1600.0, 2000.0, 3000.0]]])))


# --------------------------------------------------------------------------------------------
# Bone precision, recall, Dice


def test_bone_scores_by_hand() -> None:
    # Bone voxels (flat index) at each threshold, after clipping:
    #   ct  : 1500@3 1500@4 400@5 800@6;   sct : 1500@3 1000@4 600@5 800@6
    #   t=300,400: CT={3,4,5,6} sCT={3,4,5,6}  -> P=R=D=1
    #   t=500,600: CT={3,4,6}   sCT={3,4,5,6}  -> P=3/4, R=1, D=6/7
    #   t=700,800: CT={3,4,6}   sCT={3,4,6}    -> 1
    #   t=900    : CT={3,4}     sCT={3,4}      -> 1
    scores = bone_scores(SCT, CT)
    assert scores.precision == pytest.approx((5 + 2 * 3 / 4) / 7)
    assert scores.recall == pytest.approx(1.0)
    assert scores.dice == pytest.approx((5 + 2 * 6 / 7) / 7)
    # Swapping the images swaps precision and recall; Dice is symmetric.
    swapped = bone_scores(CT, SCT)
    assert swapped.precision == pytest.approx(scores.recall)
    assert swapped.recall == pytest.approx(scores.precision)
    assert swapped.dice == pytest.approx(scores.dice)


def test_bone_scores_average_over_thresholds() -> None:
    # ct = (1000, 1000), sct = (1000, 450):
    #   t=300,400    : CT={0,1} sCT={0,1} -> P=1, R=1,   D=1
    #   t=500..900 (5): CT={0,1} sCT={0}  -> P=1, R=1/2, D=2/3
    ct = np.array([[[1000.0, 1000.0]]])
    sct = np.array([[[1000.0, 450.0]]])
    scores = bone_scores(sct, ct)
    assert scores.precision == pytest.approx(1.0)
    assert scores.recall == pytest.approx((2 + 5 * 0.5) / 7)
    assert scores.dice == pytest.approx((2 + 5 * 2 / 3) / 7)
    # One threshold only
    single = bone_scores(sct, ct, thresholds=(500.0,))
    assert (single.precision, single.recall) == (1.0, 0.5)
    assert single.dice == pytest.approx(2 / 3)


def test_threshold_is_inclusive() -> None:
    # ct >= t and sct >= t: a voxel exactly at 300 HU is bone at t=300 only.
    at = bone_scores(_full(300), _full(300), thresholds=(300.0,))
    assert (at.precision, at.recall, at.dice) == (1.0, 1.0, 1.0)
    below = bone_scores(_full(299), _full(300), thresholds=(300.0,))
    assert (below.precision, below.recall, below.dice) == (0.0, 0.0, 0.0)


def test_no_bone_in_either_is_perfect() -> None:
    scores = bone_scores(_full(0), _full(100))
    assert (scores.precision, scores.recall, scores.dice) == (1.0, 1.0, 1.0)


def test_missed_bone_scores_zero() -> None:
    # CT has bone at every threshold, sCT at none: precision 0 (empty sCT, non-empty CT).
    scores = bone_scores(_full(0), _full(1000))
    assert (scores.precision, scores.recall, scores.dice) == (0.0, 0.0, 0.0)


def test_spurious_bone_scores_zero() -> None:
    # sCT has bone, CT has none: recall 0 by convention (empty CT, non-empty sCT).
    scores = bone_scores(_full(1000), _full(0))
    assert (scores.precision, scores.recall, scores.dice) == (0.0, 0.0, 0.0)


def test_empty_set_convention_per_threshold() -> None:
    # ct = 550, sct = 0: at t=300,400,500 CT has bone, sCT none -> 0, 0, 0;
    # at t=600..900 neither has bone -> 1, 1, 1. Average: 4/7 each.
    scores = bone_scores(_full(0), _full(550))
    assert scores.precision == pytest.approx(4 / 7)
    assert scores.recall == pytest.approx(4 / 7)
    assert scores.dice == pytest.approx(4 / 7)


def test_bone_scores_with_mask() -> None:
    # Mask out the voxel (flat 5: ct 400, sct 600) that caused the t=500,600 disagreement.
    mask = np.ones(CT.shape, dtype=bool)
    mask[0, 1, 2] = False
    scores = bone_scores(SCT, CT, mask=mask)
    assert (scores.precision, scores.recall, scores.dice) == (1.0, 1.0, 1.0)


def test_bone_thresholds_are_the_papers() -> None:
    assert BONE_THRESHOLDS == (300, 400, 500, 600, 700, 800, 900)


# --------------------------------------------------------------------------------------------
# SynthRAD: MAE in body, PSNR, SSIM


def test_mae_body_is_unclipped() -> None:
    # |diffs| unclipped: 500 + 50 + 0 + 1500 + 500 + 200 + 0 + 300 + 200 = 3250
    assert mae_body(SCT, CT) == pytest.approx(3250 / 9)
    assert mae_body(_full(3000), _full(1500)) == 1500.0


def test_mae_body_with_body_mask() -> None:
    body = np.zeros(CT.shape, dtype=bool)
    body[0, 1, :] = True  # 1500 + 500 + 200
    assert mae_body(SCT, CT, body_mask=body) == pytest.approx(2200 / 3)


def test_psnr_of_known_mse() -> None:
    # MSE = 100² = 1e4 -> PSNR = 10 log10(4024² / 1e4) = 20 log10(40.24) ≈ 32.0932 dB
    assert psnr(_full(100), _full(0)) == pytest.approx(20 * math.log10(40.24))
    assert psnr(_full(100), _full(0)) == pytest.approx(32.0932, abs=1e-4)


def test_psnr_clips_to_synthrad_range() -> None:
    assert psnr(_full(5000), _full(3000)) == math.inf
    assert psnr(_full(-3000), _full(-1024)) == math.inf
    # 4000 clips to 3000: MSE = 3000² -> 10 log10(4024² / 9e6)
    assert psnr(_full(4000), _full(0)) == pytest.approx(10 * math.log10(4024**2 / 9e6))


def test_psnr_with_mask() -> None:
    sct = np.array([[[100.0, 100.0, 300.0, 300.0]]])
    ct = np.zeros_like(sct)
    mask = np.array([[[True, True, False, False]]])
    assert psnr(sct, ct, mask=mask) == pytest.approx(20 * math.log10(40.24))
    # All voxels: MSE = (2·100² + 2·300²)/4 = 50000
    assert psnr(sct, ct) == pytest.approx(10 * math.log10(4024**2 / 50000))


def test_ssim_of_identical_images_is_one() -> None:
    rng = np.random.default_rng(2)
    ct = rng.uniform(-1024, 3000, size=(8, 9, 10))
    assert ssim(ct, ct) == 1.0
    assert ssim(ct, ct.copy(), mask=ct > 0) == 1.0


def test_ssim_of_constant_offset() -> None:
    # Both constant: variances and covariance vanish, so SSIM is the luminance term only.
    # Shifted to [0, 4024]: ct -> 1024, sct -> 1124; C1 = (0.01·4024)² = 1619.2576.
    # SSIM = (2·1024·1124 + C1) / (1024² + 1124² + C1) = 1 - 100² / (1024² + 1124² + C1)
    c1 = (0.01 * 4024) ** 2
    expected = 1 - 100**2 / (1024**2 + 1124**2 + c1)
    assert ssim(_full(100, (8, 8, 8)), _full(0, (8, 8, 8))) == pytest.approx(expected, rel=1e-6)
    assert expected < 1.0


def test_ssim_of_offset_textured_image_below_one() -> None:
    rng = np.random.default_rng(3)
    ct = rng.uniform(-500, 1500, size=(8, 8, 8))
    value = ssim(ct + 200, ct)
    assert 0.0 < value < 1.0


def test_ssim_clips_to_synthrad_range() -> None:
    # Equal after clipping -> identical images
    assert ssim(_full(5000, (7, 7, 7)), _full(3000, (7, 7, 7))) == 1.0


def test_ssim_ignores_differences_outside_mask() -> None:
    # Outside the mask both images are set to -1024 before filtering, as SynthRAD does.
    rng = np.random.default_rng(4)
    ct = rng.uniform(-1000, 2000, size=(10, 11, 12))
    sct = ct.copy()
    mask = np.zeros(ct.shape, dtype=bool)
    mask[3:7, 3:8, 4:9] = True
    sct[~mask] += rng.normal(0, 500, size=int((~mask).sum()))
    assert ssim(sct, ct, mask=mask) == 1.0
    assert ssim(sct, ct) < 0.99


def _ssim_by_windows(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    """A slow, independent SSIM: every 7-voxel window off the 3-voxel border, sample statistics."""
    x = np.clip(x, -1024, 3000) + 1024
    y = np.clip(y, -1024, 3000) + 1024
    c1, c2 = (0.01 * 4024) ** 2, (0.03 * 4024) ** 2
    values = []
    for centre in np.ndindex(*(n - 6 for n in x.shape)):
        window = tuple(slice(i, i + 7) for i in centre)
        px, py = x[window].ravel(), y[window].ravel()
        mx, my = px.mean(), py.mean()
        vx, vy = px.var(ddof=1), py.var(ddof=1)
        cxy = np.cov(px, py, ddof=1)[0, 1]
        values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_explicit_windows_in_2d_and_3d() -> None:
    rng = np.random.default_rng(5)
    ct = rng.uniform(-1200, 3200, size=(9, 12))
    sct = 0.8 * ct + rng.normal(0, 400, size=ct.shape)
    assert ssim(sct, ct) == pytest.approx(_ssim_by_windows(sct, ct), rel=1e-5)
    ct3 = rng.uniform(-1200, 3200, size=(8, 9, 10))
    sct3 = 0.8 * ct3 + rng.normal(0, 400, size=ct3.shape)
    assert ssim(sct3, ct3) == pytest.approx(_ssim_by_windows(sct3, ct3), rel=1e-5)


def _synthrad_ssim(
    gt: npt.NDArray[np.float32], pred: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]
) -> float:
    """SSIM as SynthRAD 2023's evaluation computes it (SynthRAD2023/metrics, image_metrics.py)."""
    low, high = -1024.0, 3000.0
    gt = np.where(mask == 0, low, np.clip(gt, low, high)) - low
    pred = np.where(mask == 0, low, np.clip(pred, low, high)) - low
    _, full = structural_similarity(gt, pred, data_range=high - low, full=True)
    return float(crop(full, 3)[crop(mask, 3).astype(bool)].mean(dtype=np.float64))


def test_ssim_is_synthrads_on_a_masked_volume() -> None:
    rng = np.random.default_rng(6)
    shape = (12, 14, 16)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1)[:, None, None, None] / 2
    body = (((grid - centre) / np.array([5.0, 6.0, 7.0])[:, None, None, None]) ** 2).sum(0) <= 1
    ct = np.where(body, rng.integers(-200, 1800, size=shape), -1000).astype(np.float32)
    ct[body & (rng.random(shape) < 0.05)] = 3500  # some voxels above the range: clipped
    sct = (0.9 * ct + rng.normal(0, 400, size=shape)).astype(np.float32)
    expected = _synthrad_ssim(ct, sct, body)
    assert ssim(sct, ct, mask=body) == pytest.approx(expected, rel=1e-12)
    # any input dtypes, computed in float32 as the challenge does (it reads images as float32)
    assert ssim(sct.astype(np.float64), ct.astype(np.int16), mask=body.astype(np.uint8)) == (
        pytest.approx(expected, rel=1e-12)
    )
    assert 0.3 < expected < 0.99
    # without a mask: the whole cropped map, which is skimage's own mean
    full_mean = structural_similarity(
        np.clip(ct, -1024, 3000) + 1024, np.clip(sct, -1024, 3000) + 1024, data_range=4024.0
    )
    assert ssim(sct, ct) == pytest.approx(full_mean, rel=1e-6)


def test_ssim_is_nan_where_synthrad_cannot_compute_it() -> None:
    rng = np.random.default_rng(7)
    ct = rng.uniform(-1000, 2000, size=(6, 12, 12))
    assert math.isnan(ssim(ct, ct))  # an axis shorter than the 7-voxel window
    ct = rng.uniform(-1000, 2000, size=(9, 9, 9))
    border = np.ones(ct.shape, dtype=bool)
    border[3:6, 3:6, 3:6] = False
    assert math.isnan(ssim(ct, ct, mask=border))  # no masked voxel off the cropped border
    assert ssim(ct, ct, mask=~border) == 1.0


# --------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize("fn", [mae, mse, pearson_r, bone_scores, mae_body, psnr, ssim])
def test_shape_mismatch_raises(fn: object) -> None:
    assert callable(fn)
    with pytest.raises(ValueError, match="shape"):
        fn(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


@pytest.mark.parametrize("fn", [mae, mse, pearson_r, bone_scores, psnr, ssim])
def test_mask_shape_mismatch_raises(fn: object) -> None:
    assert callable(fn)
    with pytest.raises(ValueError, match="mask"):
        fn(_full(0), _full(0), mask=np.ones((2, 2), dtype=bool))


@pytest.mark.parametrize("fn", [mae, mse, pearson_r, bone_scores, psnr, ssim])
def test_empty_mask_raises(fn: object) -> None:
    assert callable(fn)
    with pytest.raises(ValueError, match="no voxels"):
        fn(_full(0), _full(0), mask=np.zeros((2, 2, 2), dtype=bool))


def test_body_mask_validated() -> None:
    with pytest.raises(ValueError, match="mask"):
        mae_body(_full(0), _full(0), body_mask=np.ones((3,), dtype=bool))


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(8)
    ct = rng.uniform(-2000, 4000, size=(8, 8, 8))
    sct = ct + rng.normal(0, 100, size=ct.shape)
    mask = ct > -600
    copies = (ct.copy(), sct.copy(), mask.copy())
    for fn in (mae, mse, pearson_r, bone_scores, psnr, ssim):
        fn(sct, ct, mask=mask)  # type: ignore[operator]
    mae_body(sct, ct, body_mask=mask)
    for original, copy in zip((ct, sct, mask), copies, strict=True):
        np.testing.assert_array_equal(original, copy)


def test_module_exports() -> None:
    for name in metrics.__all__:
        assert hasattr(metrics, name)
