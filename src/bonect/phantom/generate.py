"""Phantom patients: paired bone-MR and CT volumes on acquisition grids, from a seed."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from bonect.converter.volume import Volume
from bonect.phantom.acquisition import ORIENTATIONS, Acquisition, Orientation
from bonect.phantom.anatomy import PatientParams, render_anatomy
from bonect.phantom.contrast import MrAppearance, ct_from_anatomy, mr_from_anatomy
from bonect.phantom.shapes import Frame
from bonect.phantom.variation import (
    Family,
    Technique,
    draw_acquisition,
    draw_appearance,
    draw_family_patient,
    draw_gain,
    draw_technique,
)

__all__ = ["ORIENTATIONS", "Acquisition", "Orientation", "PhantomCase", "generate_case"]


@dataclass(frozen=True)
class PhantomCase:
    """One phantom patient: bone MR, its CT (own session and grid), and the truth on the MR grid.

    ``ct_on_mr`` is the CT as a good registration would bring it onto the MR grid: a residual
    misregistration of under a millimetre and a degree remains, as in real paired data.
    """

    index: int
    params: PatientParams
    contrast: Technique
    mr: Volume
    ct_on_mr: Volume
    labels: Volume
    ct: Volume | None
    family: Family = "classic"
    appearance: MrAppearance | None = None


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
    contrast: Technique | None = None,
    acquisition: Acquisition | None = Acquisition(),
    ct_acquisition: Acquisition | None = Acquisition("axial", (1.5, 1.0, 1.0)),
    family: Family = "classic",
) -> PhantomCase:
    """Render patient `index` of the cohort `seed`: MR, CT on the MR grid, labels, and a CT.

    ``family`` (:mod:`bonect.phantom.variation`) sets how widely patient, scanner and
    acquisition are drawn; ``contrast=None`` draws the technique from it (classic: ZTE) and
    ``acquisition=None`` the plane, voxel size and field of view. ``ct_acquisition=None``
    skips the separately acquired CT (training needs only ``ct_on_mr``).
    """
    pseed = patient_seed(seed, index)
    params = draw_family_patient(pseed, family)
    technique = contrast or draw_technique(pseed, family)
    appearance = draw_appearance(pseed, family, technique)
    if acquisition is None:
        acquisition = draw_acquisition(pseed, family)
    rng = np.random.default_rng(pseed + 1)
    grid = acquisition.grid()
    points = _grid_points(grid)
    labels, mineral = render_anatomy(params, points, grid.shape, grid_affine=grid.affine)
    frame = Frame(points, grid.shape, np.random.default_rng(pseed + 2))
    bias_cells = (
        3 if family == "classic" else int(np.random.default_rng([pseed, 16]).integers(2, 6))
    )
    field = frame.smooth_noise(cells=bias_cells, extent=160.0)
    bias = (1.0 + appearance.bias_amplitude * field).astype(np.float32)
    mr = mr_from_anatomy(labels, mineral, grid.spacing, appearance, rng, bias)
    scanner_scale = float(rng.uniform(600.0, 1800.0))  # arbitrary receiver gain
    if family != "classic":
        scanner_scale = draw_gain(pseed, family)
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
        contrast=technique,
        mr=grid.with_array((mr * scanner_scale).astype(np.float32)),
        ct_on_mr=grid.with_array(ct_on_mr),
        labels=grid.with_array(labels),
        ct=ct,
        family=family,
        appearance=appearance,
    )
