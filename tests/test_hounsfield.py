"""The one HU range and the CT constants every part shares."""

from __future__ import annotations

import numpy as np

from bonect.hounsfield import AIR_HU, BONE_WINDOW, HU_MAX, HU_MIN, HU_RANGE, window_bounds
from bonect.registry import Manifest


def test_the_range_is_that_of_a_12_bit_ct_with_intercept_minus_1024() -> None:
    assert (HU_MIN, HU_MAX) == (-1024, 3071) and HU_MAX - HU_MIN == 2**12 - 1
    assert (float(HU_MIN), float(HU_MAX)) == HU_RANGE
    assert HU_MIN < AIR_HU < 0


def test_a_model_without_an_explicit_range_maps_onto_the_one_range() -> None:
    fields = Manifest.model_fields
    assert (fields["hu_min"].default, fields["hu_max"].default) == HU_RANGE


def test_the_bone_window_shows_minus_500_to_1500() -> None:
    assert window_bounds(BONE_WINDOW) == (-500.0, 1500.0)
    assert np.clip(np.array([-3000.0, 5000.0]), *HU_RANGE).tolist() == [HU_MIN, HU_MAX]
