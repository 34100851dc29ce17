"""Phantom patients: paired bone-MR and CT volumes on acquisition grids, from a seed."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from bonect.converter.volume import Volume
from bonect.phantom.anatomy import PatientParams, _Frame, draw_patient, render_anatomy
from bonect.phantom.contrast import Contrast, ct_from_anatomy, mr_from_anatomy

Orientation = Literal["axial", "sagittal", "coronal"]
ORIENTATIONS: tuple[Orientation, ...] = ("axial", "sagittal", "coronal")

# ImageOrientationPatient (row cosines, column cosines) of each acquisition plane.
_IOP: dict[Orientation, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}
# The field of view, an LPS box (mm) holding head and upper neck.
FOV_MIN = np.array([-112.0, -126.0, -150.0])
FOV_MAX = np.array([112.0, 102.0, 118.0])


@dataclass(frozen=True)
class Acquisition:
    """Where and how an image is sampled: plane and voxel size (slice, row, column) in mm."""

    orientation: Orientation = "axial"
    spacing: tuple[float, float, float] = (2.0, 1.5, 1.5)

    def grid(self) -> Volume:
        """An empty volume whose affine covers the field of view in this plane."""
        row_cos, col_cos = (np.asarray(v) for v in _IOP[self.orientation])
        normal = np.cross(row_cos, col_cos)
        axes = (normal, col_cos, row_cos)  # index order: slice, row, column
        extent = FOV_MAX - FOV_MIN
        shape = tuple(
            int(np.floor(abs(float(axis @ extent)) / step)) + 1
            for axis, step in zip(axes, self.spacing, strict=True)
        )
        affine = np.eye(4)
        corner = np.where(np.sum(axes, axis=0) >= 0, FOV_MIN, FOV_MAX)  # start of every axis
        for i, (axis, step) in enumerate(zip(axes, self.spacing, strict=True)):
            affine[:3, i] = axis * step
        affine[:3, 3] = corner
        shape3 = (shape[0], shape[1], shape[2])
        return Volume(np.zeros(shape3, dtype=np.uint8), affine)


@dataclass(frozen=True)
class PhantomCase:
    """One phantom patient: bone MR, its CT (own session and grid), and the truth on the MR grid.

    ``ct_on_mr`` is the CT as a good registration would bring it onto the MR grid: a residual
    misregistration of under a millimetre and a degree remains, as in real paired data.
    """

    index: int
    params: PatientParams
    contrast: Contrast
    mr: Volume
    ct_on_mr: Volume
    labels: Volume
    ct: Volume | None


def _grid_points(grid: Volume) -> npt.NDArray[np.float32]:
    k, r, c = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in grid.shape), indexing="ij")
    index = np.stack([k.ravel(), r.ravel(), c.ravel()], axis=1)
    return (index @ grid.affine[:3, :3].T.astype(np.float32)) + grid.affine[:3, 3].astype(
        np.float32
    )


def _jitter(
    params: PatientParams, rng: np.random.Generator, deg: float, mm: float
) -> PatientParams:
    rot = tuple(
        float(a + b) for a, b in zip(params.rotation_deg, rng.uniform(-deg, deg, 3), strict=True)
    )
    shift = tuple(
        float(a + b) for a, b in zip(params.shift_mm, rng.uniform(-mm, mm, 3), strict=True)
    )
    return replace(
        params, rotation_deg=(rot[0], rot[1], rot[2]), shift_mm=(shift[0], shift[1], shift[2])
    )


def patient_seed(seed: int, index: int) -> int:
    """The seed of patient `index` of a cohort drawn from `seed`."""
    return seed * 10_007 + index


def generate_case(
    seed: int,
    index: int,
    *,
    contrast: Contrast = "zte",
    acquisition: Acquisition = Acquisition(),
    ct_acquisition: Acquisition | None = Acquisition("axial", (1.5, 1.0, 1.0)),
) -> PhantomCase:
    """Render patient `index` of the cohort `seed`: MR, CT on the MR grid, labels, and a CT.

    ``ct_acquisition=None`` skips the separately acquired CT (training needs only ``ct_on_mr``).
    """
    pseed = patient_seed(seed, index)
    params = draw_patient(pseed)
    rng = np.random.default_rng(pseed + 1)
    grid = acquisition.grid()
    points = _grid_points(grid)
    labels, mineral = render_anatomy(params, points, grid.shape, grid_affine=grid.affine)
    frame = _Frame(points, grid.shape, np.random.default_rng(pseed + 2))
    bias = (1.0 + 0.2 * frame.smooth_noise(cells=3, extent=160.0)).astype(np.float32)
    mr = mr_from_anatomy(labels, mineral, grid.spacing, contrast, rng, bias)
    scanner_scale = float(rng.uniform(600.0, 1800.0))  # arbitrary receiver gain
    residual = _jitter(params, rng, deg=0.8, mm=0.8)
    ct_labels, ct_mineral = render_anatomy(residual, points, grid.shape, grid_affine=grid.affine)
    ct_on_mr = ct_from_anatomy(ct_labels, ct_mineral, grid.spacing, rng)
    ct: Volume | None = None
    if ct_acquisition is not None:
        other_session = _jitter(params, rng, deg=4.0, mm=8.0)
        ct_grid = ct_acquisition.grid()
        ct_points = _grid_points(ct_grid)
        l2, m2 = render_anatomy(other_session, ct_points, ct_grid.shape, grid_affine=ct_grid.affine)
        ct = ct_grid.with_array(ct_from_anatomy(l2, m2, ct_grid.spacing, rng))
    return PhantomCase(
        index=index,
        params=params,
        contrast=contrast,
        mr=grid.with_array((mr * scanner_scale).astype(np.float32)),
        ct_on_mr=grid.with_array(ct_on_mr),
        labels=grid.with_array(labels),
        ct=ct,
    )
