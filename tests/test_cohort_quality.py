"""``bonect quality``: the bundled U-Net and the classical map scored on a phantom family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bonect.cohort_quality import evaluate_cohort, write_quality
from bonect.converter.model_folder import load_model
from bonect.demo import bundled_model


def test_a_quick_cohort_is_scored_per_patient_and_written(tmp_path: Path) -> None:
    model = load_model(bundled_model())
    result = evaluate_cohort(
        model,
        "shifted",
        patients=1,
        seed=7,
        spacing=(5.0, 4.0, 4.0),
        figures=tmp_path / "figures",
        progress=False,
    )
    (row,) = result.rows
    assert "PETRA" in row.description and "5x4x4 mm" in row.description
    for score in (row.unet, row.classical):
        assert 0 < score.mae_hu < 1000 and 0 <= score.bone_dice <= 1
        assert np.isfinite(score.mean_error_hu)
    assert row.ratio == row.unet.mae_hu / row.classical.mae_hu
    # the true CT through the 128 cube: better than any model, not free of loss
    assert 0 < row.perfect.mae_hu < row.unet.mae_hu and 0 <= row.perfect.bone_dice <= 1
    assert 0.0 <= result.spread.auc <= 1.0 and result.spread.voxels > 10_000
    paths = write_quality(result, tmp_path)
    report = json.loads(paths[0].read_text(encoding="utf-8"))
    assert report["family"] == "shifted"
    assert report["patients"][0]["name"] == "shifted-1" and report["input_size"] == 128
    assert report["patients"][0]["perfect"]["mae_hu"] == round(row.perfect.mae_hu, 3)
    table = paths[1].read_text(encoding="utf-8")
    assert "| shifted-1 |" in table and "AUC" in table and "**mean**" in table
    assert "perfect at 128³" in table
    (figure,) = (tmp_path / "figures").glob("figure1_*.png")
    assert figure.name == "figure1_shifted-1.png" and figure.stat().st_size > 10_000
