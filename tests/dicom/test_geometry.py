"""The geometry authority: one stack check, the same verdict for the reader and for settle."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import highdicom
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from bonect.catalog import Catalog, catalog_url
from bonect.converter.dicom_reader import read_series_datasets
from bonect.daemon.settle import completeness, series_is_complete, settle_once
from bonect.dicom.geometry import (
    StackProblem,
    check_stack,
    frame_geometry,
    stack_affine,
)
from bonect.errors import SeriesError
from bonect.rules import RulesConfig
from catalog.catalog_support import AXIAL, SAGITTAL, FakeClock, header
from series_factory import make_enhanced_mr, make_mr_series

SHAPE = (10, 16, 16)
SPACING = (2.5, 0.75, 1.25)
OBLIQUE = (0.866025404, 0.5, 0.0, -0.35355339, 0.612372436, -0.707106781)


def stack(n: int, spacing: float = 1.5, start: float = 0.0) -> list[tuple[float, float, float]]:
    return [(0.0, 0.0, start + k * spacing) for k in range(n)]


def complete(
    positions: list[tuple[float, float, float]],
    orientation: tuple[float, ...],
    expected: int | None,
) -> bool:
    return check_stack(positions, [orientation] * len(positions), expected).complete


# -- check_stack (moved here from tests/daemon/test_settle.py with settle's own check) -----------


def test_contiguous_stack_in_any_order_is_complete() -> None:
    positions = stack(10)
    assert complete(positions, AXIAL, None)
    assert complete(list(reversed(positions)), AXIAL, 10)
    assert complete(positions[3:] + positions[:3], AXIAL, None)
    verdict = check_stack(positions[3:] + positions[:3], [AXIAL] * 10)
    assert verdict.order == (7, 8, 9, 0, 1, 2, 3, 4, 5, 6)
    assert verdict.spacing == pytest.approx(1.5)


def test_missing_slice_is_incomplete() -> None:
    positions = stack(10)
    del positions[4]
    assert not complete(positions, AXIAL, None)
    verdict = check_stack(positions, [AXIAL] * 9)
    assert verdict.problem is StackProblem.MISSING_SLICES and verdict.missing == 1
    assert "1 between 4.50 and 7.50 mm" in verdict.message


def test_count_must_match_the_expected_count() -> None:
    assert not complete(stack(8), AXIAL, 10)  # slices 9 and 10 not received yet
    assert complete(stack(10), AXIAL, 10)
    verdict = check_stack(stack(8), [AXIAL] * 8, 10)
    assert verdict.problem is StackProblem.INCOMPLETE and verdict.missing == 2
    assert verdict.valid and not verdict.complete  # a usable volume, not all of it yet


def test_spacing_is_measured_along_the_slice_normal() -> None:
    sagittal = [(-k * 1.2, 5.0, 7.0) for k in range(6)]  # normal of SAGITTAL is -x
    assert complete(sagittal, SAGITTAL, 6)
    assert not complete(sagittal, AXIAL, 6)  # all at one depth along z


def test_small_rounding_is_tolerated_but_uneven_spacing_is_not() -> None:
    rounded = [(0.0, 0.0, round(k * 1.333333, 3)) for k in range(12)]
    assert complete(rounded, AXIAL, None)
    uneven = [*stack(5), (0.0, 0.0, 5 * 1.5 + 0.3)]
    assert not complete(uneven, AXIAL, None)
    assert check_stack(uneven, [AXIAL] * 6).problem is StackProblem.IRREGULAR_SPACING


def test_degenerate_input_is_incomplete() -> None:
    assert not complete([], AXIAL, None)
    assert not complete(stack(3), (1.0, 0.0, 0.0, 1.0, 0.0, 0.0), None)
    assert not complete(stack(3), AXIAL[:5], None)
    assert not complete([(0.0, 0.0, 1.0)] * 4, AXIAL, None)  # stacked duplicates
    assert not complete([(0.0, 0.0, float("nan")), (0.0, 0.0, 1.0)], AXIAL, None)
    assert not check_stack([*stack(2), None], [AXIAL] * 3).valid
    assert check_stack([*stack(2), None], [AXIAL] * 3).slice_index == 2


def test_single_slice() -> None:
    assert complete(stack(1), AXIAL, None)
    assert complete(stack(1), AXIAL, 1)
    assert not complete(stack(1), AXIAL, 2)


def test_a_tilted_stack_is_refused() -> None:
    """Slices stacked off their normal (a gantry tilt) do not fit a highdicom volume grid."""
    tilt = math.tan(math.radians(5.0))
    positions = [(0.0, k * 2.0 * tilt, k * 2.0) for k in range(20)]
    verdict = check_stack(positions, [AXIAL] * 20)
    assert verdict.problem is StackProblem.TILTED_STACK
    assert "tilted 5 degrees" in verdict.message


# -- frame_geometry and the affine -------------------------------------------------------------


def test_frame_geometry_of_classic_and_enhanced_instances() -> None:
    classic = make_mr_series(SHAPE, SPACING, "sagittal")
    (plane,) = frame_geometry(classic[3])
    assert plane.problem is None
    assert plane.position == tuple(float(v) for v in classic[3].ImagePositionPatient)
    assert plane.orientation == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert plane.pixel_spacing == (0.75, 1.25)
    for per_frame in (False, True):
        order = [3, 0, 9, 1, 8, 2, 7, 4, 6, 5]
        enhanced = make_enhanced_mr(
            SHAPE, SPACING, "sagittal", per_frame_geometry=per_frame, frame_order=order
        )
        frames = frame_geometry(enhanced)
        assert len(frames) == SHAPE[0]
        assert [f.position for f in frames] == [
            tuple(float(v) for v in classic[k].ImagePositionPatient) for k in order
        ]
        assert {f.orientation for f in frames} == {plane.orientation}
        assert {f.pixel_spacing for f in frames} == {plane.pixel_spacing}


def test_frame_geometry_names_what_is_missing_or_malformed() -> None:
    ds = make_mr_series(SHAPE, SPACING)[0]
    del ds.ImagePositionPatient
    assert frame_geometry(ds)[0].problem == "no ImagePositionPatient"
    ds = make_mr_series(SHAPE, SPACING)[0]
    ds.PixelSpacing = [0.5]
    assert frame_geometry(ds)[0].problem == "invalid PixelSpacing [0.5]"
    enhanced = make_enhanced_mr(SHAPE, SPACING)
    del enhanced.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    assert {f.problem for f in frame_geometry(enhanced)} == {"no ImageOrientationPatient"}


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal", OBLIQUE])
@pytest.mark.parametrize("direction", [1, -1])
def test_the_volume_is_highdicoms(orientation: str | tuple[float, ...], direction: int) -> None:
    """The reader's volume is highdicom's volume from the same series, slice axis flipped."""
    datasets = make_mr_series(SHAPE, SPACING, orientation, direction=direction, seed=2)
    ours = read_series_datasets(datasets, modality="MR").volume
    theirs = highdicom.get_volume_from_series(datasets, dtype=np.float32).flip_spatial(0)
    np.testing.assert_array_equal(ours.array, theirs.array)
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-8)
    assert isinstance(ours, highdicom.Volume)
    enhanced = make_enhanced_mr(SHAPE, SPACING, orientation, direction=direction, seed=2)
    image = highdicom.Image.from_dataset(enhanced).get_volume().flip_spatial(0)
    np.testing.assert_allclose(image.affine, ours.affine, atol=1e-8)
    first = frame_geometry(datasets[0 if direction == 1 else -1])[0]
    assert first.position is not None and first.orientation is not None
    assert first.pixel_spacing is not None
    affine = stack_affine(first.position, first.orientation, first.pixel_spacing, SPACING[0])
    np.testing.assert_allclose(affine, ours.affine, atol=1e-8)


# -- the same verdict from the reader and from settle ----------------------------------------


def _tilted(datasets: list[Dataset]) -> list[Dataset]:
    angle = math.radians(5.0)  # slice 5 turned 5 degrees about x
    column = [0.0, math.cos(angle), math.sin(angle)]
    datasets[4].ImageOrientationPatient = [1.0, 0.0, 0.0, *(f"{v:.10f}" for v in column)]
    return datasets


def _duplicate(datasets: list[Dataset]) -> list[Dataset]:
    twin = copy.deepcopy(datasets[2])
    twin.SOPInstanceUID = generate_uid()
    return [*datasets, twin]


def _irregular(datasets: list[Dataset]) -> list[Dataset]:
    for k, ds in enumerate(datasets):  # steps alternate 2.0 and 3.0 mm
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k + (0.5 if k % 2 else 0.0)]
    return datasets


def _gantry_tilt(datasets: list[Dataset]) -> list[Dataset]:
    for k, ds in enumerate(datasets):
        y = 2.5 * k * math.tan(math.radians(10.0))
        ds.ImagePositionPatient = [0.0, f"{y:.6f}", 2.5 * k]
    return datasets


CASES: dict[str, tuple[Callable[[list[Dataset]], list[Dataset]], StackProblem | None]] = {
    "good": (lambda datasets: datasets, None),
    "missing slice": (lambda datasets: datasets[:4] + datasets[5:], StackProblem.MISSING_SLICES),
    "duplicate": (_duplicate, StackProblem.DUPLICATES),
    "tilted slice": (_tilted, StackProblem.MIXED_ORIENTATIONS),
    "irregular": (_irregular, StackProblem.IRREGULAR_SPACING),
    "gantry tilt": (_gantry_tilt, StackProblem.TILTED_STACK),
}


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url(tmp_path, ""))
    yield opened
    opened.close()


def _receive(catalog: Catalog, datasets: list[Dataset], clock: FakeClock) -> str:
    """Record the datasets as the SCP would (their planes, as the header parser reads them)."""
    series_uid = str(datasets[0].SeriesInstanceUID)
    for k, ds in enumerate(datasets):
        (plane,) = frame_geometry(ds)
        instance = replace(
            header(series_uid, k),
            sop_instance_uid=str(ds.SOPInstanceUID),
            image_position=plane.position,
            image_orientation=plane.orientation,
            images_in_acquisition=ds.get("ImagesInAcquisition"),
        )
        catalog.record_instance(
            instance,
            Path("/archive") / instance.sop_instance_uid,
            received_at=clock.now(),
            association_id="a1",
        )
    catalog.association_released("a1", clock.advance(1))
    return series_uid


@pytest.mark.parametrize("case", list(CASES))
def test_reader_and_settle_give_the_same_verdict(case: str, catalog: Catalog) -> None:
    change, problem = CASES[case]
    datasets = change(make_mr_series(SHAPE, SPACING, "axial", origin=(0.0, 0.0, 0.0), seed=4))
    clock = FakeClock()
    series_uid = _receive(catalog, datasets, clock)

    geometry = catalog.series_geometry(series_uid)
    assert geometry is not None
    verdict = completeness(geometry)
    assert verdict.problem is problem
    settled = settle_once(catalog, RulesConfig(), clock.now(), quiet_seconds=60.0)
    assert series_is_complete(geometry) is (problem is None)
    assert (len(settled) == 1) is (problem is None)  # early settle only when complete

    if problem is None:
        series = read_series_datasets(datasets, modality="MR")
        assert series.volume.shape[0] == len(datasets)
        return
    with pytest.raises(SeriesError) as refused:
        read_series_datasets(datasets, modality="MR")
    assert verdict.message in str(refused.value)  # the same diagnostic, word for word


def test_a_short_series_is_usable_but_not_yet_complete(catalog: Catalog) -> None:
    """The one designed difference: fewer slices than ImagesInAcquisition says.

    Settle waits (the rest may still come, on another association) while the reader, asked
    after the quiet time, converts the regular stack it has.
    """
    datasets = make_mr_series(SHAPE, SPACING, "axial", seed=4)
    for ds in datasets:
        ds.ImagesInAcquisition = SHAPE[0] + 1
    clock = FakeClock()
    series_uid = _receive(catalog, datasets, clock)
    geometry = catalog.series_geometry(series_uid)
    assert geometry is not None and geometry.expected_count == SHAPE[0] + 1
    verdict = completeness(geometry)
    assert verdict.problem is StackProblem.INCOMPLETE and verdict.valid
    assert settle_once(catalog, RulesConfig(), clock.now(), quiet_seconds=60.0) == []
    assert read_series_datasets(datasets, modality="MR").volume.shape[0] == SHAPE[0]
