"""The 3-plane spread as an error detector: AUC, the F1 threshold, and the calibration record."""

from __future__ import annotations

import numpy as np
import pytest

from bonect.trainer.spread_calibration import calibrate, f1_threshold, roc_auc


def test_roc_auc_is_one_for_a_perfect_ranking_and_half_for_noise() -> None:
    positive = np.array([False, False, True, True])
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), positive) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), positive) == 0.0
    rng = np.random.default_rng(0)
    noise = roc_auc(rng.random(20_000), rng.random(20_000) < 0.2)
    assert noise == pytest.approx(0.5, abs=0.02)
    assert np.isnan(roc_auc(np.array([1.0, 2.0]), np.array([False, False])))


def test_the_f1_threshold_separates_two_populations() -> None:
    rng = np.random.default_rng(1)
    right = rng.normal(20.0, 10.0, 9_000)  # spread of voxels the sCT gets right
    wrong = rng.normal(150.0, 20.0, 1_000)  # ... and of those it gets wrong
    score = np.concatenate([right, wrong])
    positive = np.arange(score.size) >= right.size
    t = f1_threshold(score, positive)
    assert 55.0 < t < 110.0  # between the two, not at the crowd of right voxels


def test_calibrate_reports_what_the_threshold_flags() -> None:
    rng = np.random.default_rng(2)
    error = np.abs(rng.normal(0.0, 120.0, 50_000))
    spread = error * 0.5 + rng.normal(0.0, 15.0, error.size)  # informative, not perfect
    result = calibrate([spread[:20_000], spread[20_000:]], [error[:20_000], error[20_000:]])
    assert result.voxels == 50_000
    assert 0.85 < result.auc <= 1.0
    assert result.spearman > 0.8
    assert result.mae_top10_hu > 2 * result.mae_rest_hu
    flagged = spread > result.threshold_hu
    assert result.share_above == pytest.approx(flagged.mean())
    assert result.precision == pytest.approx((error[flagged] > 200).mean())
    fixed = calibrate([spread], [error], threshold_hu=10.0)
    assert fixed.threshold_hu == 10.0 and fixed.share_above > result.share_above
