"""Tests of bonect.metrics_report: the record of every metric, its summary, its table."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bonect import metrics_report
from bonect.image_metrics import bone_scores, mae, mae_body, mse, pearson_r, psnr, ssim
from bonect.metrics_report import Metrics, compute_metrics, format_table, mean_ci95

# The hand-made pair of test_image_metrics.py (1×3×3: too small for SSIM, which is NaN on it).
CT = np.array([[[-1000, 0, 100], [1500, 1500, 400], [800, -500, 0]]], dtype=np.int16)
SCT = np.array([[[-500, 50, 100], [3000, 1000, 600], [800, -800, 200]]], dtype=np.float32)


def _volume_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1100, 3100, size=(8, 9, 10))
    return 0.9 * ct + rng.normal(0, 200, size=ct.shape), ct


def test_compute_metrics_agrees_with_the_functions() -> None:
    sct, ct = _volume_pair()
    m = compute_metrics(sct, ct)
    bone = bone_scores(sct, ct)
    expected = {
        "mae": mae(sct, ct),
        "mse": mse(sct, ct),
        "pearson_r": pearson_r(sct, ct),
        "bone_precision": bone.precision,
        "bone_recall": bone.recall,
        "bone_dice": bone.dice,
        "mae_body": mae_body(sct, ct),
        "psnr": psnr(sct, ct),
        "ssim": ssim(sct, ct),
    }
    assert m.as_dict() == expected
    assert not math.isnan(m.ssim)
    small = compute_metrics(SCT, CT)
    assert small.mae == pytest.approx(950 / 9)
    assert small.mae_body == pytest.approx(3250 / 9)
    assert math.isnan(small.ssim)


def test_compute_metrics_masks() -> None:
    mask = np.zeros(CT.shape, dtype=bool)
    mask[0, 1, :] = True
    body = np.ones(CT.shape, dtype=bool)
    body[0, 0, 0] = False
    # body_mask defaults to mask
    m = compute_metrics(SCT, CT, mask=mask)
    assert m.mae == pytest.approx(700 / 3)
    assert m.mae_body == pytest.approx(2200 / 3)
    assert m.psnr == pytest.approx(psnr(SCT, CT, mask=mask))
    # An explicit body mask drives SynthRAD's metrics only
    m = compute_metrics(SCT, CT, mask=mask, body_mask=body)
    assert m.mae == pytest.approx(700 / 3)
    assert m.mae_body == pytest.approx((3250 - 500) / 8)
    assert m.psnr == pytest.approx(psnr(SCT, CT, mask=body))
    sct, ct = _volume_pair()
    head = np.zeros(ct.shape, dtype=bool)
    head[2:7, 2:8, 2:9] = True
    core = np.zeros(ct.shape, dtype=bool)
    core[3:5, 3:6, 3:7] = True  # inside SSIM's cropped border
    m = compute_metrics(sct, ct, mask=head, body_mask=core)
    assert m.mae == mae(sct, ct, mask=head)
    assert m.ssim == ssim(sct, ct, mask=core) != ssim(sct, ct, mask=head)


def test_compute_metrics_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="mask"):
        compute_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), body_mask=np.ones((3,), bool))


def test_inputs_are_not_modified() -> None:
    ct = CT.copy()
    sct = SCT.copy()
    compute_metrics(sct, ct, mask=ct > -600)
    np.testing.assert_array_equal(ct, CT)
    np.testing.assert_array_equal(sct, SCT)


def test_metrics_is_frozen_and_as_dict() -> None:
    m = compute_metrics(SCT, CT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.mae = 0.0  # type: ignore[misc]
    d = m.as_dict()
    assert list(d) == [
        "mae",
        "mse",
        "pearson_r",
        "bone_precision",
        "bone_recall",
        "bone_dice",
        "mae_body",
        "psnr",
        "ssim",
    ]
    assert Metrics(**d) == m


def _metrics(**overrides: float) -> Metrics:
    base = {
        "mae": 95.6,
        "mse": 54321.0,
        "pearson_r": 0.872,
        "bone_precision": 0.665,
        "bone_recall": 0.519,
        "bone_dice": 0.567,
        "mae_body": 64.84,
        "psnr": 30.123,
        "ssim": 0.9361,
    }
    base.update(overrides)
    return Metrics(**base)


def test_format_table_layout() -> None:
    text = format_table({"Light_U-Net MAE": _metrics()})
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0] == (
        "| method | MAE (HU) | MSE (×10³ HU²) | R | bone precision | bone recall | bone Dice"
        " | SynthRAD MAE | PSNR (dB) | SSIM |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|---|"
    assert lines[2] == (
        "| Light_U-Net MAE | 95.6 | 54.3 | 0.872 | 0.665 | 0.519 | 0.567 | 64.8 | 30.12 | 0.936 |"
    )
    assert len(lines) == 3


def test_format_table_bolds_the_best() -> None:
    rows = {
        "a": _metrics(mae=97.6, mse=51300.0, bone_recall=0.538),
        "b": _metrics(mae=95.6, bone_dice=math.nan, psnr=math.inf),
    }
    lines = format_table(rows).splitlines()
    a = lines[2].split(" | ")
    b = lines[3].split(" | ")
    assert a[1] == "97.6" and b[1] == "**95.6**"  # lower MAE is better
    assert a[2] == "**51.3**" and b[2] == "54.3"  # lower MSE is better
    assert a[3] == "**0.872**" and b[3] == "**0.872**"  # ties are all bold
    assert a[5] == "**0.538**" and b[5] == "0.519"  # higher recall is better
    assert a[6] == "**0.567**" and b[6] == "n/a"  # NaN is shown as n/a, never best
    assert b[8] == "**∞**"
    plain = format_table(rows, bold_best=False)
    assert "**" not in plain


def test_mean_ci95_by_hand() -> None:
    # (1, 2, 3): mean 2, s = 1, SEM = 1/√3, t(0.975, df=2) = 4.3027 (tables)
    mean, lo, hi = mean_ci95([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)
    assert mean == 2.0
    assert lo == pytest.approx(2.0 - half, rel=1e-6)
    assert hi == pytest.approx(2.0 + half, rel=1e-6)


def test_mean_ci95_edge_cases() -> None:
    assert mean_ci95([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    mean, lo, hi = mean_ci95([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_module_exports() -> None:
    for name in metrics_report.__all__:
        assert hasattr(metrics_report, name)
