"""The uncertainty threshold in one place: the model's calibrated one, else 100 HU."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bonect.converter.pipeline import Classical, uncertainty_threshold_hu
from bonect.registry import Manifest
from bonect.uncertainty import (
    DEFAULT_THRESHOLD_HU,
    THRESHOLD_KEY,
    summary,
    threshold_hu,
    uncertain_share,
)
from bonect.web import thumbnails

MANIFEST = Manifest(name="m", version="1", architecture="light_unet", input_size=32)


def test_a_model_without_a_calibrated_threshold_gets_100_hu() -> None:
    assert THRESHOLD_KEY == "uncertainty_threshold_hu"
    assert DEFAULT_THRESHOLD_HU == 100.0
    assert threshold_hu(MANIFEST) == 100.0


def test_a_calibrated_threshold_in_the_manifest_is_used() -> None:
    calibrated = MANIFEST.model_copy(update={"metrics": {THRESHOLD_KEY: 142.5}})
    assert threshold_hu(calibrated) == 142.5


@pytest.mark.parametrize("value", [0.0, -5.0, float("nan"), float("inf")])
def test_a_calibrated_threshold_that_is_not_positive_is_ignored(
    value: float, caplog: pytest.LogCaptureFixture
) -> None:
    broken = MANIFEST.model_copy(update={"metrics": {THRESHOLD_KEY: value}})
    with caplog.at_level(logging.WARNING):
        assert threshold_hu(broken) == DEFAULT_THRESHOLD_HU
    assert THRESHOLD_KEY in caplog.text


def test_the_classical_map_has_no_threshold() -> None:
    assert uncertainty_threshold_hu(Classical()) is None


def test_the_share_counts_head_voxels_above_the_threshold() -> None:
    spread = np.array([[[0.0, 50.0, 150.0, 300.0, 500.0]]], dtype=np.float32)
    head = np.array([[[False, True, True, True, False]]])
    assert uncertain_share(spread, head, 100.0) == pytest.approx(2 / 3)
    assert uncertain_share(spread, np.zeros_like(head), 100.0) == 0.0
    assert summary(0.032, 100.0) == "planes disagree by > 100 HU in 3.2 % of the head"


def test_the_status_page_uses_the_same_default() -> None:
    assert not hasattr(thumbnails, "UNCERTAIN_HU")  # no threshold of its own
    assert thumbnails.render_job.__kwdefaults__ == {"threshold_hu": DEFAULT_THRESHOLD_HU}
