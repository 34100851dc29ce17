"""Shared trainer fixtures: three coarse phantom patients cached at 32²."""

from __future__ import annotations

import pytest

from bonect.converter.volume import write_nifti
from bonect.phantom.generate import Acquisition, generate_case
from bonect.trainer.cache import CachedPair, PairSource, build_cache

COARSE_SIZE = 32


@pytest.fixture(scope="session")
def coarse_pairs(tmp_path_factory: pytest.TempPathFactory) -> list[CachedPair]:
    """Three coarse phantom patients (4 mm voxels), cached at 32² (about 70 slices each);
    read-only for the tests that share them."""
    root = tmp_path_factory.mktemp("coarse-pairs")
    sources = []
    for index in (1, 2, 3):
        case = generate_case(
            11, index, acquisition=Acquisition("axial", (4.0, 4.0, 4.0)), ct_acquisition=None
        )
        mr = write_nifti(case.mr, root / f"p{index}" / "mr.nii.gz")
        ct = write_nifti(case.ct_on_mr, root / f"p{index}" / "ct.nii.gz")
        sources.append(PairSource(f"external-phantom/PH{index:04d}", f"key{index}", mr, ct))
    return build_cache(root / "cache", sources, COARSE_SIZE, progress=False)
