"""Series completeness: when a received series is judged complete, classified and queued.

A series settles after ``quiet_seconds`` without a new instance, or earlier, as soon as the
association that delivered its last instance has been released *and* it is complete
(:func:`series_is_complete`: the geometry authority :func:`bonect.dicom.geometry.check_stack`,
the very check the converter's reader makes, plus the expected slice count). On settling, the
rules give it a role; a ``convert`` series gets a job. An instance arriving for a settled series
re-opens it (the catalog does that), and the next settle queues it again; the worker then
replaces the earlier output.

An aborted association is not a release: the modality (or this node) stopped mid-series, and a
stack cut at slice 140 of 298 has no gap to give it away. Its series waits
``aborted_quiet_seconds`` (an hour by default) for the rest, unless its expected count
(ImagesInAcquisition, NumberOfFrames) shows it whole; a new instance (the resend) clears the
abort and the series settles as any other.

The quiet timers are judged on the wall clock of the catalog (every receiver host writes it)
*and*, with a :class:`QuietWatch`, on this process's monotonic clock: a series settles on a
timer only when it has also been seen unchanged for as long. A step of the wall clock (NTP after
a drift, a resumed VM: measured with +1 h mid-series, a cut series settled, converted and sent)
then settles nothing early; after a restart the timers start again, which only delays.

:func:`settle_once` is one step of the settle loop, driven with the time passed in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from bonect.audit import AuditEvent, AuditTrail, Participant, Subject
from bonect.catalog.queue import Catalog
from bonect.catalog.records import SeriesGeometry
from bonect.dicom.geometry import StackProblem, StackVerdict, check_stack
from bonect.rules import RulesConfig, classify

logger = logging.getLogger(__name__)


def completeness(geometry: SeriesGeometry) -> StackVerdict:
    """Whether a catalogued series' instances form a complete volume, and if not, why.

    A single-frame series is judged by :func:`~bonect.dicom.geometry.check_stack` from the
    catalogued positions and orientations, with ImagesInAcquisition as the expected count. The
    catalog keeps one plane per instance, so a multi-frame (Enhanced) series is complete when
    its frames add up to the expected count (NumberOfFrames); the reader judges its planes.
    """
    if any(frames > 1 for frames in geometry.frames):
        expected = geometry.expected_count
        total = sum(geometry.frames)
        if expected is not None and total == expected:
            return StackVerdict(None, f"{total} frames")
        return StackVerdict(
            StackProblem.INCOMPLETE,
            f"{total} of {expected if expected is not None else 'an unknown number of'} frames",
            missing=max(0, (expected or 0) - total),
        )
    return check_stack(geometry.positions, geometry.orientations, geometry.expected_count)


def series_is_complete(geometry: SeriesGeometry) -> bool:
    """Whether a catalogued series' instances form a complete volume (see :func:`completeness`)."""
    return completeness(geometry).complete


class QuietWatch:
    """How long this process has seen each open series unchanged, on a monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, tuple[object, float]] = {}  # series -> (its state, seen since)

    def unchanged_for(self, series_uid: str, state: object) -> float:
        """Seconds since ``series_uid`` was first seen in ``state`` (0 when it just changed)."""
        now = self._clock()
        seen = self._seen.get(series_uid)
        if seen is None or seen[0] != state:
            self._seen[series_uid] = (state, now)
            return 0.0
        return now - seen[1]

    def forget(self, series_uid: str) -> None:
        self._seen.pop(series_uid, None)

    def keep_only(self, open_series: set[str]) -> None:
        """Forget the series no longer open (settled here, by another host, or deleted)."""
        for series_uid in self._seen.keys() - open_series:
            del self._seen[series_uid]


def settle_once(
    catalog: Catalog,
    rules: RulesConfig,
    now: datetime,
    *,
    quiet_seconds: float,
    aborted_quiet_seconds: float = 3600.0,
    audit: AuditTrail | None = None,
    watch: QuietWatch | None = None,
) -> list[int]:
    """Settle every series that is complete at ``now``; returns the ids of the jobs queued.

    A series whose quiet time has passed settles whatever its geometry (the converter judges
    it then); a released one settles early only with complete geometry. A series that
    received an instance between being read and being settled is left for the next step.
    With ``watch``, the quiet time must also have passed on its monotonic clock.
    """
    queued: list[int] = []
    # with a watch, every open series is looked at, so that its monotonic timer starts with
    # its last instance rather than when the wall clock first calls it quiet
    candidates = catalog.series_to_settle(now, quiet_seconds if watch is None else 0.0)
    if watch is not None:
        watch.keep_only({series.series_uid for series in candidates})
    for series in candidates:
        aborted = series.association_aborted_at is not None
        wait = aborted_quiet_seconds if aborted else quiet_seconds
        quiet = series.last_received_at <= now - timedelta(seconds=wait)
        if watch is not None:
            state = (series.revision, series.instance_count, aborted)
            seen_quiet = watch.unchanged_for(series.series_uid, state) >= wait
            if quiet and not seen_quiet:
                logger.debug("series %s: quiet by the wall clock only", series.series_uid)
            quiet = quiet and seen_quiet
            ended = aborted or series.association_released_at is not None
            if not quiet and not ended:
                continue  # still arriving: nothing to judge yet
        if not quiet:
            geometry = catalog.series_geometry(series.series_uid)
            if geometry is None:
                continue
            verdict = completeness(geometry)
            if not verdict.complete:
                logger.debug("series %s not complete: %s", series.series_uid, verdict.message)
                continue
            if aborted and geometry.expected_count is None:
                logger.debug("series %s: aborted, no count to judge by", series.series_uid)
                continue
        role = classify(rules, series)
        settled = catalog.settle_series(
            series.series_uid, revision=series.revision, role=role, now=now
        )
        if settled is None:
            logger.debug("series %s changed while settling; next time", series.series_uid)
            continue
        if watch is not None:
            watch.forget(series.series_uid)
        logger.info(
            "series %s settled (%s, %d instances, %s) as %s",
            series.series_uid,
            ("quiet after an aborted association" if aborted else "quiet")
            if quiet
            else ("whole by its expected count" if aborted else "released, geometry complete"),
            series.instance_count,
            series.modality,
            role.value,
        )
        if audit is not None:
            audit.record(
                AuditEvent.INSTANCES_RECEIVED,
                participants=[Participant(series.calling_ae or "drop folder", requestor=True)],
                subject=Subject(
                    series.patient_key, series.study_uid, series.series_uid, series.instance_count
                ),
                detail={"role": role.value, "modality": series.modality},
            )
        if settled.job_id is not None:
            queued.append(settled.job_id)
    return queued
