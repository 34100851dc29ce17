"""The classical map on volumes too small for the default N4 shrink (a thin slab, one slice)."""

from __future__ import annotations

import numpy as np
import pytest

from bonect.converter.classical import classical_sct
from bonect.converter.volume import Volume
from bonect.hounsfield import AIR_HU


def head_like(shape: tuple[int, int, int]) -> Volume:
    """A bright ellipsoid of 'tissue' with a dark core of 'bone' in air, 1 mm voxels."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    radius = np.sqrt(x**2 + y**2 + (z**2 if shape[0] > 2 else 0))
    array = np.where(radius < 0.8, 600.0, 5.0).astype(np.float32)
    array[radius < 0.3] = 250.0
    return Volume(array, np.eye(4))


@pytest.mark.parametrize("shape", [(3, 40, 40), (7, 40, 40), (40, 5, 40), (1, 40, 40)])
def test_a_small_volume_gets_an_sct_on_its_own_grid(shape: tuple[int, int, int]) -> None:
    # N4 on a shrink of 4 once raised a raw SimpleITK error on any axis under 8 voxels
    sct = classical_sct(head_like(shape))
    assert sct.shape == shape
    assert np.isfinite(sct.array).all()
    assert float(sct.array.min()) == AIR_HU  # the air around the head
    assert float(sct.array.max()) > AIR_HU  # and something that is not air
