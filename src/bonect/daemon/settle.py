"""Series completeness: when a received series is judged complete, classified and queued.

A series settles after ``quiet_seconds`` without a new instance, or earlier, as soon as the
association that delivered its last instance has been released *and* its geometry is complete
(:func:`is_geometry_complete`). On settling, the rules give it a role; a ``convert`` series gets
a job. An instance arriving for a settled series re-opens it (the catalog does that), and the
next settle queues it again; the worker then replaces the earlier output.

:func:`settle_once` is one step of the settle loop, driven with the time passed in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import pairwise

from bonect.catalog.queue import Catalog
from bonect.catalog.records import SeriesGeometry
from bonect.daemon.rules import RulesConfig

logger = logging.getLogger(__name__)

SPACING_TOLERANCE = 0.01
"""Relative tolerance on the spacing between slices (1 %; DS values carry rounding)."""

_ABSOLUTE_TOLERANCE_MM = 1e-3
_ORIENTATION_TOLERANCE = 1e-4  # direction cosines of slices of one stack


def _unit_normal(orientation: Sequence[float]) -> tuple[float, float, float] | None:
    if len(orientation) != 6 or not all(math.isfinite(v) for v in orientation):
        return None
    r = orientation[:3]
    c = orientation[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in n))
    if norm < 1e-6:
        return None
    return (n[0] / norm, n[1] / norm, n[2] / norm)


def is_geometry_complete(
    positions: Sequence[Sequence[float]],
    orientation: Sequence[float],
    expected_count: int | None,
    *,
    tolerance: float = SPACING_TOLERANCE,
) -> bool:
    """Whether slices at ``positions`` form one gap-free stack.

    Parameters
    ----------
    positions
        ImagePositionPatient of every slice (any order), in mm.
    orientation
        ImageOrientationPatient shared by the slices (six direction cosines).
    expected_count
        ImagesInAcquisition or NumberOfFrames when the header gives one; the slice count must
        then equal it.
    tolerance
        Largest relative deviation of a gap from the median gap along the slice normal.

    Returns
    -------
    bool
        True when the positions are distinct, evenly spaced along the slice normal, and as
        many as expected; a single slice is complete only if one was expected or none stated.
    """
    if not positions:
        return False
    if expected_count is not None and len(positions) != expected_count:
        return False
    normal = _unit_normal(orientation)
    if normal is None:
        return False
    if any(len(p) != 3 or not all(math.isfinite(v) for v in p) for p in positions):
        return False
    depths = sorted(sum(p[i] * normal[i] for i in range(3)) for p in positions)
    gaps = [b - a for a, b in pairwise(depths)]
    if not gaps:
        return True
    spacing = sorted(gaps)[len(gaps) // 2]
    if spacing <= _ABSOLUTE_TOLERANCE_MM:
        return False  # stacked duplicates: several echoes or phases, not one volume
    allowed = max(spacing * tolerance, _ABSOLUTE_TOLERANCE_MM)
    return all(abs(gap - spacing) <= allowed for gap in gaps)


def series_is_complete(geometry: SeriesGeometry, *, tolerance: float = SPACING_TOLERANCE) -> bool:
    """Whether a catalogued series' instances form a complete volume.

    A multi-frame (Enhanced) series is complete when its frames add up to the expected count
    (NumberOfFrames); a single-frame series when every instance has a position, they share one
    orientation and :func:`is_geometry_complete` holds.
    """
    if any(frames > 1 for frames in geometry.frames):
        expected = geometry.expected_count
        return expected is not None and sum(geometry.frames) == expected
    positions = [p for p in geometry.positions if p is not None]
    orientations = [o for o in geometry.orientations if o is not None]
    if not positions or len(positions) != len(geometry.positions):
        return False
    if len(orientations) != len(positions):
        return False
    orientation = orientations[0]
    if any(
        max(abs(a - b) for a, b in zip(o, orientation, strict=True)) > _ORIENTATION_TOLERANCE
        for o in orientations
    ):
        return False
    return is_geometry_complete(
        positions, orientation, geometry.expected_count, tolerance=tolerance
    )


def settle_once(
    catalog: Catalog, rules: RulesConfig, now: datetime, *, quiet_seconds: float
) -> list[int]:
    """Settle every series that is complete at ``now``; returns the ids of the jobs queued.

    A series whose quiet time has passed settles whatever its geometry (the converter judges
    it then); a released one settles early only with complete geometry. A series that
    received an instance between being read and being settled is left for the next step.
    """
    cutoff = now - timedelta(seconds=quiet_seconds)
    queued: list[int] = []
    for series in catalog.series_to_settle(now, quiet_seconds):
        quiet = series.last_received_at <= cutoff
        if not quiet:
            geometry = catalog.series_geometry(series.series_uid)
            if geometry is None or not series_is_complete(geometry):
                continue
        role = rules.classify(series)
        settled = catalog.settle_series(
            series.series_uid, revision=series.revision, role=role, now=now
        )
        if settled is None:
            logger.debug("series %s changed while settling; next time", series.series_uid)
            continue
        logger.info(
            "series %s settled (%s, %d instances, %s) as %s",
            series.series_uid,
            "quiet" if quiet else "released, geometry complete",
            series.instance_count,
            series.modality,
            role.value,
        )
        if settled.job_id is not None:
            queued.append(settled.job_id)
    return queued
