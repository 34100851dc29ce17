"""The one geometry authority: where frames lie, and whether slices form one regular stack.

The converter's reader (is this series a usable volume?) and the daemon's settle (is this series
complete, may it settle before its quiet time?) ask :func:`check_stack` the same question with
the same tolerances, so a series settles early exactly when the reader will accept it. The volume
grid of an accepted stack is highdicom's (:func:`stack_affine` builds it with
``highdicom.spatial.create_affine_matrix_from_attributes``); this module adds what highdicom does
not say: *why* a stack is refused (how many slices are missing and where, duplicates, a tilted
slice), in one line.

Tolerances (one set, below): each ImageOrientationPatient must be unit and orthogonal within
:data:`ORTHONORMAL_TOLERANCE` (highdicom's own tolerance for a volume's affine, so every
accepted stack makes a valid ``highdicom.Volume``); the slices of a stack may differ in
orientation by :data:`ORIENTATION_TOLERANCE` per direction cosine; slices closer than
:data:`DUPLICATE_TOLERANCE_MM` along the normal are duplicates; a step longer than
:data:`GAP_FACTOR` times the median step means missing slices; and no slice may lie further
than :data:`GRID_TOLERANCE` of a step from where the volume's affine puts it (this refuses
irregular spacing and stacks not stacked along their normal, e.g. a gantry tilt).

Completeness (settle) is validity plus, when the header states one (ImagesInAcquisition,
NumberOfFrames), the expected slice count. The reader judges validity only: a stack that is
regular but shorter than its header claims is still a usable volume. (Just over 400 lines: the
frame readers and the stack verdict share one set of tolerances and are one authority.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from highdicom.spatial import (
    VOLUME_INDEX_CONVENTION,
    create_affine_matrix_from_attributes,
    get_normal_vector,
)
from pydicom.dataset import Dataset

F64 = npt.NDArray[np.float64]
Vector3 = tuple[float, float, float]
Orientation = tuple[float, float, float, float, float, float]

ORTHONORMAL_TOLERANCE = 1e-4
"""Largest deviation of ImageOrientationPatient from unit, orthogonal direction cosines."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between a direction cosine of two slices of one stack."""
PIXEL_SPACING_TOLERANCE = 1e-3
"""Largest difference (mm) between the PixelSpacing of two slices of one stack."""
DUPLICATE_TOLERANCE_MM = 1e-2
"""Slices closer than this along the normal are duplicates (echoes, phases, stacks)."""
GAP_FACTOR = 1.5
"""A step longer than this times the median step means missing slices."""
GRID_TOLERANCE = 0.1
"""Largest distance of a slice from its place on the volume grid, as a fraction of the step."""

# The slice axis runs along row cosine × column cosine (increasing position on the normal):
# left-handed with highdicom's (slice, row, column) index convention.
_HANDEDNESS = "LEFT_HANDED"

_PER_FRAME = "PerFrameFunctionalGroupsSequence"
_SHARED = "SharedFunctionalGroupsSequence"


class StackProblem(StrEnum):
    """Why a stack of slices is not one complete, regular volume."""

    NO_SLICES = "no slices"
    NO_GEOMETRY = "no geometry"
    INVALID_ORIENTATION = "invalid orientation"
    MIXED_ORIENTATIONS = "mixed orientations"
    DUPLICATES = "duplicate slices"
    MISSING_SLICES = "missing slices"
    IRREGULAR_SPACING = "irregular spacing"
    TILTED_STACK = "tilted stack"
    INCOMPLETE = "fewer slices than expected"


@dataclass(frozen=True)
class StackVerdict:
    """What :func:`check_stack` found.

    ``order`` lists the input indices sorted by increasing position along the slice normal
    (empty when the geometry could not be read); ``spacing`` is the mean step along the normal
    in mm (0 for fewer than two slices); ``message`` explains ``problem`` in one line (no series
    context); ``slice_index`` is the input index of the slice a per-slice problem is about.
    """

    problem: StackProblem | None
    message: str
    order: tuple[int, ...] = ()
    spacing: float = 0.0
    slice_index: int | None = None
    missing: int = 0
    duplicates: int = 0

    @property
    def valid(self) -> bool:
        """Whether the slices form one regular stack (whatever count the header expects)."""
        return self.problem is None or self.problem is StackProblem.INCOMPLETE

    @property
    def complete(self) -> bool:
        """Whether the stack is valid and as long as expected."""
        return self.problem is None


@dataclass(frozen=True)
class FrameGeometry:
    """Plane of one frame: a classic instance, or one frame of an Enhanced (multi-frame) one.

    A value that is absent or malformed is ``None`` and ``problem`` names the first such
    (e.g. ``"no ImagePositionPatient"``, ``"invalid PixelSpacing [0.5]"``).
    """

    position: Vector3 | None
    orientation: Orientation | None
    pixel_spacing: tuple[float, float] | None
    problem: str | None


def has_functional_groups(ds: Dataset) -> bool:
    """Whether ``ds`` keeps its geometry in functional groups (Enhanced / multi-frame IODs)."""
    return _PER_FRAME in ds or _SHARED in ds


def functional_group(ds: Dataset, frame_index: int, keyword: str) -> Dataset | None:
    """The first item of a functional group macro of one frame: per-frame first, then shared."""
    sources: list[Dataset] = []
    per_frame = ds.get(_PER_FRAME)
    if per_frame is not None and frame_index < len(per_frame):
        sources.append(per_frame[frame_index])
    shared = ds.get(_SHARED)
    if shared is not None and len(shared):
        sources.append(shared[0])
    for source in sources:
        if keyword in source and len(source[keyword].value):
            first: Dataset = source[keyword].value[0]
            return first
    return None


def frame_geometry(ds: Dataset) -> tuple[FrameGeometry, ...]:
    """Position, orientation and pixel spacing of every frame of ``ds``.

    A classic instance has one frame, described by its top-level attributes; an instance with
    functional groups has one per item of PerFrameFunctionalGroupsSequence (or NumberOfFrames
    when that sequence is absent), each read from PlanePositionSequence,
    PlaneOrientationSequence and PixelMeasuresSequence, per-frame first, then shared. A
    malformed plane attribute is reported in :attr:`FrameGeometry.problem`, never raised.
    """
    if not has_functional_groups(ds):
        return (_geometry_of(ds, ds, ds),)
    per_frame = ds.get(_PER_FRAME)
    if per_frame is not None and len(per_frame):
        count = len(per_frame)
    else:
        count = _int(ds.get("NumberOfFrames")) or 1
    return tuple(
        _geometry_of(
            functional_group(ds, k, "PlanePositionSequence"),
            functional_group(ds, k, "PlaneOrientationSequence"),
            functional_group(ds, k, "PixelMeasuresSequence"),
        )
        for k in range(count)
    )


def check_stack(
    positions: Sequence[Sequence[float] | None],
    orientations: Sequence[Sequence[float] | None],
    expected_count: int | None = None,
) -> StackVerdict:
    """Judge whether slices form one complete, regular stack (the reader and settle agree).

    Parameters
    ----------
    positions
        ImagePositionPatient of every slice (any order), mm; ``None`` where unknown.
    orientations
        ImageOrientationPatient of every slice, in the same order; ``None`` where unknown.
    expected_count
        The slice count the header states (ImagesInAcquisition, NumberOfFrames), if any.

    Returns
    -------
    StackVerdict
        ``complete`` when the slices are one regular stack of the expected count; ``valid``
        when they are one regular stack. One slice is a (valid) stack.
    """
    if len(positions) != len(orientations):
        raise ValueError(f"{len(positions)} positions but {len(orientations)} orientations")
    if not positions:
        return StackVerdict(StackProblem.NO_SLICES, "no slices")
    read = _read_vectors(positions, orientations)
    if isinstance(read, StackVerdict):
        return read
    points, cosines = read
    verdict = _check_orientations(cosines)
    if verdict is None:
        verdict = _check_positions(points, cosines[0])
    if verdict.valid and expected_count is not None and len(positions) != expected_count:
        missing = max(0, expected_count - len(positions))
        return StackVerdict(
            StackProblem.INCOMPLETE,
            f"{len(positions)} of {expected_count} expected slices",
            order=verdict.order,
            spacing=verdict.spacing,
            missing=missing,
        )
    return verdict


def stack_affine(
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    spacing: float,
) -> F64:
    """The volume affine of a stack, highdicom's, in bonect's index convention.

    ``position`` is ImagePositionPatient of the first slice (lowest along the normal),
    ``orientation`` ImageOrientationPatient, ``pixel_spacing`` PixelSpacing and ``spacing`` the
    step between slices (:attr:`StackVerdict.spacing`). Voxel ``(slice, row, column)`` maps to
    LPS mm; the slice axis runs along row cosine × column cosine.
    """
    affine: F64 = create_affine_matrix_from_attributes(
        image_position=[float(v) for v in position],
        image_orientation=[float(v) for v in orientation],
        pixel_spacing=[float(v) for v in pixel_spacing],
        spacing_between_slices=float(spacing),
        index_convention=VOLUME_INDEX_CONVENTION,
        slices_first=True,
        handedness=_HANDEDNESS,
    )
    return affine


def fmt(values: Sequence[float] | F64) -> str:
    """Values as ``[a, b, c]`` with four significant digits, for one-line messages."""
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def distinct(values: Sequence[F64], tol: float) -> list[F64]:
    """The values that differ from every earlier one by more than ``tol`` (max norm)."""
    found: list[F64] = []
    for v in values:
        if not any(float(np.max(np.abs(v - f))) <= tol for f in found):
            found.append(v)
    return found


# --- reading ------------------------------------------------------------------------------------


def _int(value: object) -> int | None:
    try:
        return None if value is None or value == "" else int(str(value))
    except ValueError:
        return None


def _floats(item: Dataset | None, keyword: str, n: int) -> tuple[tuple[float, ...] | None, str]:
    """A multi-valued DS attribute as ``n`` finite floats, or ``None`` and the problem."""
    if item is None or keyword not in item:
        return None, f"no {keyword}"
    try:
        value = item[keyword].value
        values = [] if value is None or value == "" else value
        if isinstance(values, str | bytes | float | int):
            values = [values]
        floats = tuple(float(v) for v in values)
    except Exception:  # pydicom converts lazily; a malformed value fails here, in many ways
        return None, f"invalid {keyword}"
    if not floats:
        return None, f"no {keyword}"
    if len(floats) != n or not all(math.isfinite(v) for v in floats):
        return None, f"invalid {keyword} {fmt(floats)}"
    return floats, ""


def _geometry_of(
    plane: Dataset | None, orientation: Dataset | None, measures: Dataset | None
) -> FrameGeometry:
    iop, iop_problem = _floats(orientation, "ImageOrientationPatient", 6)
    ipp, ipp_problem = _floats(plane, "ImagePositionPatient", 3)
    spacing, spacing_problem = _floats(measures, "PixelSpacing", 2)
    problem = next((p for p in (iop_problem, ipp_problem, spacing_problem) if p), None)
    return FrameGeometry(
        position=None if ipp is None else (ipp[0], ipp[1], ipp[2]),
        orientation=None if iop is None else (iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]),
        pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
        problem=problem,
    )


# --- judging ------------------------------------------------------------------------------------


def _read_vectors(
    positions: Sequence[Sequence[float] | None], orientations: Sequence[Sequence[float] | None]
) -> tuple[F64, list[F64]] | StackVerdict:
    points = np.zeros((len(positions), 3))
    cosines: list[F64] = []
    for k, (p, o) in enumerate(zip(positions, orientations, strict=True)):
        for value, n, name in ((o, 6, "ImageOrientationPatient"), (p, 3, "ImagePositionPatient")):
            arr = np.asarray([] if value is None else value, dtype=np.float64)
            if arr.shape != (n,) or not np.all(np.isfinite(arr)):
                problem = f"no {name}" if value is None else f"invalid {name} {fmt(arr)}"
                return StackVerdict(StackProblem.NO_GEOMETRY, problem, slice_index=k)
        points[k] = np.asarray(p, dtype=np.float64)
        cosines.append(np.asarray(o, dtype=np.float64))
    return points, cosines


def _check_orientations(cosines: list[F64]) -> StackVerdict | None:
    for k, iop in enumerate(cosines):
        row, col = iop[:3], iop[3:]
        errors = (np.linalg.norm(row) - 1.0, np.linalg.norm(col) - 1.0, row @ col)
        if max(abs(float(e)) for e in errors) > ORTHONORMAL_TOLERANCE:
            return StackVerdict(
                StackProblem.INVALID_ORIENTATION,
                f"invalid ImageOrientationPatient {fmt(iop)}",
                slice_index=k,
            )
    found = distinct(cosines, ORIENTATION_TOLERANCE)
    if len(found) > 1:  # no slice_index: the message names the orientations, not one slice
        return StackVerdict(
            StackProblem.MIXED_ORIENTATIONS,
            f"mixed orientations: {len(found)} different ImageOrientationPatient values, "
            f"e.g. {fmt(found[0])} and {fmt(found[1])}",
        )
    return None


def _check_positions(points: F64, iop: F64) -> StackVerdict:
    normal = np.asarray(
        get_normal_vector(
            [float(v) for v in iop],
            index_convention=VOLUME_INDEX_CONVENTION,
            handedness=_HANDEDNESS,
        ),
        dtype=np.float64,
    )
    distances = points @ normal
    order = np.argsort(distances, kind="stable")
    ordered = tuple(int(i) for i in order)
    if len(points) < 2:
        return StackVerdict(None, "one slice", order=ordered)
    d = distances[order]
    steps = np.diff(d)

    duplicate = steps <= DUPLICATE_TOLERANCE_MM
    if np.any(duplicate):
        where = d[1:][duplicate]
        return StackVerdict(
            StackProblem.DUPLICATES,
            f"duplicate slice positions: {int(duplicate.sum())} slices share a position with "
            f"another, first at {where[0]:.2f} mm along the normal "
            "(several echoes, phases or stacks?)",
            order=ordered,
            duplicates=int(duplicate.sum()),
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        missing = [max(1, round(steps[i] / median) - 1) for i in gaps]
        places = ", ".join(
            f"{m} between {d[i]:.2f} and {d[i + 1]:.2f} mm"
            for m, i in zip(missing[:3], gaps[:3], strict=False)
        )
        more = f" and {gaps.size - 3} more gaps" if gaps.size > 3 else ""
        return StackVerdict(
            StackProblem.MISSING_SLICES,
            f"missing slices: about {sum(missing)} slices seem missing along the normal "
            f"(spacing {median:.3g} mm): {places}{more}",
            order=ordered,
            spacing=median,
            missing=sum(missing),
        )

    spacing = float((d[-1] - d[0]) / (len(d) - 1))
    first = points[order[0]]
    grid = first[None, :] + np.arange(len(d))[:, None] * (spacing * normal)[None, :]
    deviation = float(np.max(np.linalg.norm(points[order] - grid, axis=1)))
    limit = GRID_TOLERANCE * spacing
    if deviation <= limit:
        return StackVerdict(None, f"{len(d)} slices, {spacing:.4g} mm apart", ordered, spacing)
    span = points[order[-1]] - first
    drift = float(np.linalg.norm(span - (span @ normal) * normal))
    if drift > limit:
        angle = math.degrees(math.atan2(drift, float(span @ normal)))
        return StackVerdict(
            StackProblem.TILTED_STACK,
            f"slices are not stacked along their normal: the stack is tilted {angle:.3g} degrees "
            f"from it, {drift:.3g} mm over {len(d)} slices (gantry tilt?)",
            order=ordered,
            spacing=spacing,
        )
    return StackVerdict(
        StackProblem.IRREGULAR_SPACING,
        f"irregular slice spacing: steps from {steps.min():.3g} to {steps.max():.3g} mm, "
        f"a slice lies {deviation:.3g} mm off the regular grid",
        order=ordered,
        spacing=spacing,
    )
