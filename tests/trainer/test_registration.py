"""Registration of a phantom patient's CT onto their bone MR: conventions, accuracy, score, errors.

Everything runs on 3 mm phantoms (about 0.5 M voxels a grid): one registration takes a few
seconds on two cores. The known-pose CT is rendered here from the patient's own parameters with
a chosen head pose, so the true MR → CT mapping is known exactly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import SimpleITK as sitk

from bonect.converter.preprocess import head_mask
from bonect.converter.volume import Volume
from bonect.phantom.anatomy import render_anatomy, rotation_matrix
from bonect.phantom.contrast import ct_from_anatomy
from bonect.phantom.generate import Acquisition, PhantomCase, generate_case
from bonect.trainer.overlay import overlay_png
from bonect.trainer.registration import (
    DEFAULT_THRESHOLD,
    RegistrationError,
    RegistrationResult,
    image_to_volume,
    register_ct_to_mr,
    registration_quality,
    resample_ct,
    transform_matrix,
    volume_to_image,
)

SPACING = (3.0, 3.0, 3.0)
IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
# the known-pose CT: head turned and moved against the MR session, and stored in another
# Frame of Reference (its patient coordinates offset by FOR_OFFSET_MM)
POSE_DEG = (3.5, -3.0, 2.5)
POSE_MM = (7.0, -6.0, 8.0)
FOR_OFFSET_MM = (150.0, -80.0, 400.0)


def _grid_points(grid: Volume) -> npt.NDArray[np.float32]:
    index = np.stack(np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij"), axis=-1)
    return grid.index_to_patient(index.reshape(-1, 3).astype(np.float64)).astype(np.float32)


def _flat(matrix: npt.NDArray[np.float64]) -> list[float]:
    return [float(v) for v in np.concatenate([matrix[:3, :3].ravel(), matrix[:3, 3]])]


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    """An adult phantom: axial MR; its CT from another session on a coronal grid."""
    return generate_case(
        3,
        1,
        acquisition=Acquisition("axial", SPACING),
        ct_acquisition=Acquisition("coronal", SPACING),
    )


@pytest.fixture(scope="module")
def posed(case: PhantomCase) -> tuple[Volume, npt.NDArray[np.float64]]:
    """The patient's CT with a known pose on a sagittal grid, and the true MR → CT matrix."""
    p = case.params
    rx, ry, rz = (a + b for a, b in zip(p.rotation_deg, POSE_DEG, strict=True))
    sx, sy, sz = (a + b for a, b in zip(p.shift_mm, POSE_MM, strict=True))
    shift = (sx, sy, sz)
    pose = replace(p, rotation_deg=(rx, ry, rz), shift_mm=shift)
    grid = Acquisition("sagittal", SPACING).grid()
    labels, mineral = render_anatomy(pose, _grid_points(grid), grid.shape, grid_affine=grid.affine)
    hu = ct_from_anatomy(labels, mineral, grid.spacing, np.random.default_rng(0))
    affine = grid.affine.copy()
    affine[:3, 3] += FOR_OFFSET_MM
    # head frame h: p = R h * scale + s in each session, so p_ct = Rc Rm^T (p_mr - s_mr) + s_ct
    r_mr, r_ct = rotation_matrix(p.rotation_deg), rotation_matrix(pose.rotation_deg)
    truth = np.eye(4)
    truth[:3, :3] = r_ct @ r_mr.T
    truth[:3, 3] = np.asarray(shift) + FOR_OFFSET_MM - truth[:3, :3] @ np.asarray(p.shift_mm)
    return Volume(hu, affine), truth


@pytest.fixture(scope="module")
def registered_posed(
    case: PhantomCase, posed: tuple[Volume, npt.NDArray[np.float64]]
) -> RegistrationResult:
    return register_ct_to_mr(case.mr, posed[0], seed=0, threads=1)


@pytest.fixture(scope="module")
def registered(case: PhantomCase) -> RegistrationResult:
    assert case.ct is not None
    return register_ct_to_mr(case.mr, case.ct, threads=1)


@pytest.fixture(scope="module")
def child() -> PhantomCase:
    """Another patient: a child, whose head is about 10 % smaller than the adult's."""
    return generate_case(3, 0, acquisition=Acquisition("axial", SPACING), ct_acquisition=None)


@pytest.fixture(scope="module")
def head(case: PhantomCase) -> npt.NDArray[np.bool_]:
    return head_mask(np.asarray(case.mr.array, np.float32), case.mr.spacing)


# -- conventions ---------------------------------------------------------------------------


@pytest.mark.parametrize("flip", [False, True])
def test_sitk_image_round_trips_an_oblique_volume(flip: bool) -> None:
    rng = np.random.default_rng(1)
    axes = rotation_matrix((20.0, -35.0, 50.0))  # columns: slice, row, column directions
    if flip:  # a left-handed grid, as a sagittal acquisition can be
        axes[:, 2] *= -1.0
    affine = np.eye(4)
    affine[:3, :3] = axes * np.array([2.5, 0.9, 1.3])
    affine[:3, 3] = (-31.0, 12.5, 80.0)
    volume = Volume(rng.normal(size=(4, 5, 6)).astype(np.float32), affine)

    image = volume_to_image(volume)
    back = image_to_volume(image)

    assert image.GetSize() == (6, 5, 4)  # sitk (x, y, z) = our (column, row, slice)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)
    for k, j, i in [(0, 0, 0), (3, 4, 5), (1, 3, 2)]:
        sitk_point = image.TransformIndexToPhysicalPoint((i, j, k))
        ours = volume.index_to_patient(np.array([k, j, i], dtype=np.float64))
        np.testing.assert_allclose(sitk_point, ours, atol=1e-9)
        assert float(image[i, j, k]) == pytest.approx(float(volume.array[k, j, i]))


def test_transform_maps_mr_points_to_ct_points() -> None:
    affine = np.eye(4)  # axial: slices along z (2 mm), rows along y (1.5 mm), columns along x
    affine[:3, :3] = [[0.0, 0.0, 1.0], [0.0, 1.5, 0.0], [2.0, 0.0, 0.0]]
    ct = Volume(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), affine)
    shift_one_column = list(IDENTITY)
    shift_one_column[9] = 1.0  # MR point + 1 mm in x = CT point: one column further

    same = resample_ct(ct, ct, IDENTITY)
    moved = resample_ct(ct, ct, shift_one_column)

    np.testing.assert_allclose(same.array, ct.array, atol=1e-4)
    np.testing.assert_allclose(moved.array[:, :, :-1], ct.array[:, :, 1:], atol=1e-4)
    assert (moved.array[:, :, -1] == -1000.0).all()  # outside the CT: air
    np.testing.assert_allclose(transform_matrix(shift_one_column)[:3, 3], [1.0, 0.0, 0.0])


# -- accuracy ------------------------------------------------------------------------------


def test_recovers_the_true_pose_across_frames_of_reference(
    case: PhantomCase,
    posed: tuple[Volume, npt.NDArray[np.float64]],
    registered_posed: RegistrationResult,
    head: npt.NDArray[np.bool_],
) -> None:
    truth = posed[1]
    found = transform_matrix(registered_posed.transform)
    points = case.mr.index_to_patient(np.argwhere(head).astype(np.float64))
    error = np.linalg.norm(points @ (found - truth)[:3, :3].T + (found - truth)[:3, 3], axis=1)

    assert error.max() < 2.0, f"mean {error.mean():.2f} mm, max {error.max():.2f} mm"
    assert error.mean() < 1.0
    # as close to the truth on the MR grid as the true transform gets (residual and noise)
    exact = resample_ct(case.mr, posed[0], _flat(truth))
    floor = float(np.abs(exact.array - case.ct_on_mr.array)[head].mean())
    found_mae = float(np.abs(registered_posed.ct_on_mr.array - case.ct_on_mr.array)[head].mean())
    assert found_mae < 1.1 * floor, f"MAE in the head {found_mae:.0f} HU, truth {floor:.0f} HU"
    assert registered_posed.stages == ("rigid", "affine")
    assert len(registered_posed.transform) == 12
    assert registered_posed.ct_on_mr.shape == case.mr.shape
    assert registered_posed.score > DEFAULT_THRESHOLD
    assert registered_posed.metric_value < -0.5  # ITK's Mattes value: minus the MI
    assert registered_posed.seconds > 0.0


def test_brings_the_phantom_ct_onto_the_truth(
    case: PhantomCase, registered: RegistrationResult, head: npt.NDArray[np.bool_]
) -> None:
    assert case.ct is not None
    truth = np.asarray(case.ct_on_mr.array)
    naive = resample_ct(case.mr, case.ct, IDENTITY)  # same patient coordinates, no registration
    before = float(np.abs(naive.array - truth)[head].mean())
    after = float(np.abs(registered.ct_on_mr.array - truth)[head].mean())

    # at 3 mm, partial volume and the truth's own residual misregistration (< 0.8 mm, 0.8°)
    # keep about 100 HU even for a perfect transform: see the known-pose test for the floor
    assert after < 0.5 * before, f"MAE in the head {before:.0f} HU -> {after:.0f} HU"
    assert registered.score > DEFAULT_THRESHOLD
    assert registered.ct_on_mr.array.dtype == np.float32
    assert float(registered.ct_on_mr.array.min()) >= -1024.0


def test_same_seed_same_result(
    case: PhantomCase,
    posed: tuple[Volume, npt.NDArray[np.float64]],
    registered_posed: RegistrationResult,
) -> None:
    threads_before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    again = register_ct_to_mr(case.mr, posed[0], seed=0, threads=1)

    assert again.transform == registered_posed.transform
    assert again.score == registered_posed.score
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads_before


# -- the score -----------------------------------------------------------------------------


def test_score_separates_good_from_failed_registrations(
    case: PhantomCase,
    posed: tuple[Volume, npt.NDArray[np.float64]],
    registered: RegistrationResult,
    registered_posed: RegistrationResult,
    child: PhantomCase,
) -> None:
    ct, truth = posed
    shifted = truth.copy()
    shifted[0, 3] += 30.0  # 30 mm to the patient's left
    noise = ct.with_array(
        np.random.default_rng(2).uniform(-1000, 1500, ct.shape).astype(np.float32)
    )
    bad = {
        "shifted 30 mm": registration_quality(case.mr, resample_ct(case.mr, ct, _flat(shifted))),
        "noise": registration_quality(case.mr, resample_ct(case.mr, noise, _flat(truth))),
        "another patient": registration_quality(case.mr, child.ct_on_mr),
    }
    good = {"phantom CT": registered.score, "known pose": registered_posed.score}

    assert min(good.values()) >= DEFAULT_THRESHOLD + 0.1, good
    assert max(bad.values()) <= DEFAULT_THRESHOLD - 0.1, bad
    assert all(0.0 <= s <= 1.0 for s in [*good.values(), *bad.values()])


def test_another_patients_ct_is_not_stretched_to_fit(case: PhantomCase, child: PhantomCase) -> None:
    result = register_ct_to_mr(case.mr, child.ct_on_mr, threads=1)

    assert result.stages == ("rigid",)  # the affine stage wanted to scale by ~0.87: rejected
    assert result.score < DEFAULT_THRESHOLD - 0.1


def test_overlay_is_a_small_png(
    case: PhantomCase, registered: RegistrationResult, tmp_path: Path
) -> None:
    path = overlay_png(case.mr, registered.ct_on_mr, tmp_path / "pair" / "overlay.png", title="x")

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) < 300_000


# -- errors --------------------------------------------------------------------------------


def _slab(ct: Volume, slices: int, *, stretch: float = 1.0) -> Volume:
    """A few middle slices of the CT, their spacing stretched by `stretch`."""
    middle = ct.shape[0] // 2
    affine = ct.affine.copy()
    affine[:3, 3] = ct.index_to_patient(np.array([middle, 0.0, 0.0]))
    affine[:3, 0] *= stretch
    return Volume(np.ascontiguousarray(ct.array[middle : middle + slices]), affine)


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("empty CT", "the CT is empty"),
        ("empty MR", "the MR is empty"),
        ("8-slice CT", "no overlap"),
        ("3 slices 90 mm apart", "registration failed"),  # too few for ITK's pyramid
    ],
)
def test_unusable_pairs_raise_one_line_errors(case: PhantomCase, what: str, expected: str) -> None:
    assert case.ct is not None
    mr, ct = case.mr, case.ct
    if what == "empty CT":
        ct = ct.with_array(np.full(ct.shape, -1000.0, dtype=np.float32))
    elif what == "empty MR":
        mr = mr.with_array(np.zeros(mr.shape, dtype=np.float32))
    elif what == "8-slice CT":
        ct = _slab(ct, 8)
    else:
        ct = _slab(ct, 3, stretch=30.0)

    with pytest.raises(RegistrationError) as caught:
        register_ct_to_mr(mr, ct)

    message = str(caught.value)
    assert expected in message
    assert "\n" not in message and len(message) < 300
