"""Tests of bonect.converter.preprocess: slicing, the model cube and its inverse, mask, scaling."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from bonect.converter.preprocess import (
    FACES_3D,
    FACES_IN_SLICE,
    cube_round_trip,
    fill_holes,
    from_cube,
    gaussian_in_slabs,
    head_mask,
    histogram_in_slabs,
    model_cube,
    normalise,
    prepare,
    set_resample_threads,
    slices,
    to_cube,
    unslice,
    with_neighbours,
)
from bonect.converter.volume import Volume
from bonect.phantom.anatomy import Tissue
from bonect.phantom.generate import Acquisition, PhantomCase, generate_case
from conftest import COARSE, PHANTOM_SEED

F64 = npt.NDArray[np.float64]
PLANES = ("axial", "coronal", "sagittal")
# (slice normal, column cosine, row cosine) of each acquisition plane, as DICOM scanners write them
GRID_AXES = {
    "axial": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),
    "coronal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
    "sagittal": ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
}


def grid(
    plane: str,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Volume:
    """An empty volume of `shape` in `plane`, centred on `centre` (LPS mm)."""
    affine = np.eye(4)
    for i, (axis, step) in enumerate(zip(GRID_AXES[plane], spacing, strict=True)):
        affine[:3, i] = np.asarray(axis) * step
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return Volume(np.zeros(shape, dtype=np.float32), affine)


def points(volume: Volume) -> F64:
    """LPS position of every voxel, shape volume.shape + (3,)."""
    index = np.stack(
        np.meshgrid(*(np.arange(n, dtype=np.float64) for n in volume.shape), indexing="ij"), -1
    )
    return volume.index_to_patient(index)


def blob(p: F64, centre: tuple[float, float, float], sigma: float) -> npt.NDArray[np.float32]:
    d2 = np.sum((p - np.asarray(centre)) ** 2, axis=-1)
    return np.asarray(np.exp(-d2 / (2 * sigma**2)), dtype=np.float32)


def correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("plane", PLANES)
def test_slices_and_unslice_are_inverse_views_of_the_cube(plane: str) -> None:
    x = np.arange(5 * 5 * 5, dtype=np.float32).reshape(5, 5, 5)
    stack = slices(x, plane)
    np.testing.assert_array_equal(unslice(stack, plane), x)
    for n in range(5):
        expected = {"axial": x[n], "coronal": x[:, n], "sagittal": x[:, :, n]}[plane]
        np.testing.assert_array_equal(stack[n], expected)


@pytest.mark.parametrize("context", [0, 1, 2])
def test_with_neighbours_puts_the_slice_in_the_middle_channel_and_repeats_the_edges(
    context: int,
) -> None:
    stack = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 3, 4), np.float32)
    which = np.array([0, 2, 5])

    picked = with_neighbours(stack, context, which)

    assert picked.shape == (3, 2 * context + 1, 3, 4)
    for row, n in enumerate(which):
        expected = np.clip(np.arange(n - context, n + context + 1), 0, 5)
        np.testing.assert_array_equal(picked[row, :, 0, 0], expected)
        np.testing.assert_array_equal(picked[row, context], stack[n])


def test_cube_of_a_volume_on_the_cube_grid_is_exact() -> None:
    """A volume that already lies on the cube grid goes to the cube and back unchanged."""
    outline = Volume(np.zeros((5, 6, 7), dtype=np.float32), np.diag([4.0, 3.0, 3.0, 1.0]))
    mask = np.zeros(outline.shape, dtype=bool)
    mask[1:4, 2:5, 2:6] = True
    cube = model_cube(outline, mask, 32)
    x = np.random.default_rng(0).normal(0.0, 1000.0, (32, 32, 32)).astype(np.float32)
    on_cube = Volume(x, cube.affine)

    assert np.array_equal(to_cube(on_cube, cube), x)
    assert np.array_equal(from_cube(x, cube, on_cube, cval=-1000.0), x)


@pytest.mark.parametrize("plane", PLANES)
def test_the_cube_encloses_exactly_the_corners_of_the_masks_extent(plane: str) -> None:
    """The cube is built from the first and last index of the mask on each axis: the same as
    from every True voxel's index (np.argwhere), for scattered masks, a single voxel and none."""
    mr = grid(plane, (20, 24, 28), (4.0, 3.0, 2.5))
    rng = np.random.default_rng(7)
    single = np.zeros(mr.shape, dtype=bool)
    single[3, 20, 5] = True
    for mask in (rng.random(mr.shape) > 0.999, single, np.zeros(mr.shape, dtype=bool)):
        idx = np.argwhere(mask if mask.any() else np.ones(mr.shape, dtype=bool))
        ends = [(idx[:, a].min(), idx[:, a].max()) for a in range(3)]
        corners = np.array([[a, b, c] for a in ends[0] for b in ends[1] for c in ends[2]])
        cube = model_cube(mr, mask, 16)
        # every corner of the extent lies inside the cube, the margin (6 mm) from its faces
        inside = np.linalg.solve(
            cube.affine, np.c_[mr.index_to_patient(corners.astype(np.float64)), np.ones(8)].T
        )[:3].T
        lo, hi = inside.min(axis=0), inside.max(axis=0)
        margin = 6.0 / cube.spacing_mm
        assert np.all(lo >= margin - 0.5 - 1e-9) and np.all(hi <= 16 - 0.5 - margin + 1e-9)
        # and the longest side of the extent touches both margins
        assert np.isclose(np.max(hi - lo), 16 - 2 * margin, atol=1e-9)


def test_anisotropic_sagittal_volume_goes_to_the_cube_and_back_smoothly() -> None:
    """A smooth image survives the trilinear resampling both ways with a small error.

    Measured on this blob (peak 1, sigma 25 mm, 5 x 2 x 2 mm sagittal, cube of 64 at 1.53 mm):
    cube vs. the analytic image 0.0059, round trip 0.0047 (max abs, where the blob > 0.2).
    """
    centre = (5.0, -10.0, 20.0)
    mr = grid("sagittal", (30, 64, 64), (5.0, 2.0, 2.0), centre)
    mr = mr.with_array(blob(points(mr), centre, 25.0))
    head = mr.array > 0.2
    cube = model_cube(mr, head, 64)

    on_cube = to_cube(mr, cube)
    truth = blob(points(Volume(on_cube, cube.affine)), centre, 25.0)
    assert float(np.abs(on_cube - truth).max()) < 0.012
    back = from_cube(on_cube, cube, mr, cval=0.0)
    assert float(np.abs(back - mr.array)[head].max()) < 0.01


@pytest.mark.parametrize("plane", PLANES)
def test_cube_is_axis_aligned_lps_whatever_the_acquisition(plane: str) -> None:
    """Cube axes run S→I, A→P, R→L: a right-anterior-superior spot comes first on every axis."""
    mr = grid(plane, (40, 56, 56), (4.0, 3.0, 3.0))
    p = points(mr)
    first = (-30.0, -40.0, 40.0)  # right, anterior, superior (LPS)
    last = (30.0, 40.0, -40.0)  # left, posterior, inferior
    cube = model_cube(mr, np.sum(p**2, axis=-1) < 70.0**2, 48)

    directions = cube.affine[:3, :3] / cube.spacing_mm
    np.testing.assert_allclose(directions, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)
    peaks = []
    for spot in (first, last):
        image = to_cube(mr.with_array(blob(p, spot, 6.0)), cube)
        peaks.append(np.unravel_index(np.argmax(image), image.shape))
    assert all(a < b for a, b in zip(*peaks, strict=True)), peaks


def test_same_anatomy_axial_or_sagittal_gives_the_same_cube(phantom_case: PhantomCase) -> None:
    """Measured: correlation 0.978 at 64³; flipping any axis or swapping two gives at most 0.88."""
    sagittal = generate_case(
        PHANTOM_SEED,
        phantom_case.index,
        acquisition=Acquisition("sagittal", COARSE),
        ct_acquisition=None,
    )
    axial_cube = prepare(phantom_case.mr, 64).image
    sagittal_cube = prepare(sagittal.mr, 64).image

    same = correlation(axial_cube, sagittal_cube)
    assert same > 0.9
    for wrong in (
        sagittal_cube[::-1],
        sagittal_cube[:, ::-1],
        sagittal_cube[:, :, ::-1],
        sagittal_cube.transpose(0, 2, 1),
        sagittal_cube.transpose(1, 0, 2),
    ):
        assert correlation(axial_cube, wrong) < same


def test_head_mask_covers_the_phantom_body(phantom_case: PhantomCase) -> None:
    """Measured at 4 x 3 x 3 mm: Dice 0.960 (the mask is a voxel wide), 0.12 % of body missed."""
    body = np.asarray(phantom_case.labels.array) > 0
    mask = head_mask(phantom_case.mr.array, phantom_case.mr.spacing)
    dice = 2 * np.sum(mask & body) / (np.sum(mask) + np.sum(body))
    assert dice > 0.95
    assert np.sum(body & ~mask) < 0.0025 * np.sum(body)


def test_normalise_puts_soft_tissue_near_one(phantom_case: PhantomCase) -> None:
    """The receiver gain is arbitrary; after normalisation soft tissue is 1 (measured 0.991)."""
    mr = phantom_case.mr.array
    assert not 0.5 < float(np.mean(mr[phantom_case.labels.array == Tissue.SOFT])) < 2.0
    mask = head_mask(mr, phantom_case.mr.spacing)
    scaled = normalise(mr, mask)
    soft = float(np.mean(scaled[phantom_case.labels.array == Tissue.SOFT]))
    assert 0.85 < soft < 1.15


def test_a_coarser_cube_loses_more_of_the_true_ct(phantom_case: PhantomCase) -> None:
    """The true CT through the model cube and back: what a perfect model of that input size
    gives. Air outside the head; the finer the cube, the closer to the CT (thin bone)."""
    ct, mr = phantom_case.ct_on_mr, phantom_case.mr
    body = np.asarray(phantom_case.labels.array) > 0
    errors = []
    for size in (32, 64, 128):
        prepared = prepare(mr, size)
        back = cube_round_trip(ct, prepared, mr, cval=-1024.0)
        assert back.shape == mr.shape and np.all(back[~prepared.mask] == -1024.0)
        errors.append(float(np.mean(np.abs(back[body] - np.asarray(ct.array)[body]))))
    assert errors[0] > errors[1] > errors[2] > 0


def test_on_fine_grids_the_closing_runs_on_2_mm_blocks_and_keeps_the_fine_outline() -> None:
    from bonect.converter import preprocess

    # a head-like ellipsoid at 0.5 mm, with a dark bone shell and a sinus open to the outside
    shape, spacing = (80, 120, 120), (0.6, 0.5, 0.5)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = np.sqrt(
        ((z - 40) * 0.6 / 22) ** 2 + ((y - 60) * 0.5 / 28) ** 2 + ((x - 60) * 0.5 / 26) ** 2
    )
    mask = r < 1.0
    mask &= ~((r > 0.8) & (r < 0.88))  # a thin dark shell (bone) under the surface
    mask &= ~((np.abs(z - 40) * 0.6 < 2) & (np.abs(y - 60) * 0.5 < 2) & (x * 0.5 > 20))  # a duct
    exact = preprocess._close(mask, spacing)
    blocked = preprocess.close_head(mask, spacing)
    assert preprocess.CLOSING_GRID_MM // spacing[1] > 1  # the blocked path ran
    assert blocked[mask].all()  # never removes what the threshold found
    inside = exact & ~mask  # what the exact closing fills
    assert blocked[inside].mean() > 0.97
    assert (blocked & ~exact).sum() <= 0.001 * exact.sum()  # hardly anything beyond it


@pytest.fixture(params=[1, 2, 5], ids=lambda n: f"{n}-threads")
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """Preparation and resampling on this many threads (slabs of 2-3 slices at 5 for 12)."""
    set_resample_threads(request.param)
    yield request.param
    set_resample_threads(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_holes_is_scipys_in_3d_and_slice_by_slice(seed: int, threads: int) -> None:
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.normal(size=(12, 30, 34)), 1.5)
    mask = blobs > np.quantile(blobs, 0.45)  # walls with enclosed and open background
    mask[:, 5:25, 5] = mask[:, 5:25, 28] = mask[:, 5, 5:29] = mask[:, 25, 5:29] = True
    mask[4:8, 14:17, 14:17] = False  # a hole inside the ring, in 3D

    filled_3d = fill_holes(mask, FACES_3D)
    filled_in_slice = fill_holes(mask, FACES_IN_SLICE)

    assert np.array_equal(filled_3d, ndimage.binary_fill_holes(mask))
    expected = np.stack([ndimage.binary_fill_holes(m) for m in mask])
    assert np.array_equal(filled_in_slice, expected)
    assert filled_in_slice.sum() > filled_3d.sum() >= mask.sum()  # the slices fill more


def test_the_gaussian_in_slabs_is_exactly_scipys(threads: int) -> None:
    rng = np.random.default_rng(threads)
    image = rng.normal(size=(12, 17, 19)).astype(np.float32)  # slabs thinner than the kernel
    for sigma in (1.0, 0.6, 2.0):
        expected = ndimage.gaussian_filter(image, sigma)
        assert np.array_equal(gaussian_in_slabs(image, sigma), expected), sigma


def test_the_histogram_in_slabs_is_exactly_numpys(threads: int) -> None:
    rng = np.random.default_rng(threads)
    image = rng.gamma(2.0, size=(12, 17, 19)).astype(np.float32)
    counts, edges = histogram_in_slabs(image, 256)
    expected_counts, expected_edges = np.histogram(image, bins=256)
    assert np.array_equal(counts, expected_counts) and np.array_equal(edges, expected_edges)
    flat = np.full((5, 3, 3), 7.0, dtype=np.float32)  # one value: numpy widens the range by 0.5
    assert all(
        np.array_equal(a, b)
        for a, b in zip(histogram_in_slabs(flat, 8), np.histogram(flat, bins=8), strict=True)
    )


def test_the_head_mask_is_the_same_on_any_number_of_threads(phantom_case: PhantomCase) -> None:
    mr = np.asarray(phantom_case.mr.array, dtype=np.float32)
    masks = []
    try:
        for n in (1, 3):
            set_resample_threads(n)
            masks.append(head_mask(mr, phantom_case.mr.spacing))
    finally:
        set_resample_threads(0)
    assert np.array_equal(masks[0], masks[1]) and masks[0].any()


def test_resampling_on_several_threads_is_exactly_the_single_threaded_result() -> None:
    centre = (5.0, -10.0, 20.0)
    mr = grid("sagittal", (30, 64, 64), (5.0, 2.0, 2.0), centre)
    mr = mr.with_array(blob(points(mr), centre, 25.0))
    cube = model_cube(mr, mr.array > 0.2, 48)
    results = []
    try:
        for threads in (1, 3):  # 3 slabs of unequal size for the 30 rows of the MR grid
            set_resample_threads(threads)
            on_cube = to_cube(mr, cube)
            results.append((on_cube, from_cube(on_cube, cube, mr, cval=-1000.0)))
    finally:
        set_resample_threads(0)
    (cube_1, back_1), (cube_3, back_3) = results
    assert np.array_equal(cube_1, cube_3)
    assert np.array_equal(back_1, back_3)
    assert (back_1 == -1000.0).any() and (back_1 > 0.2).any()  # outside and inside the cube
