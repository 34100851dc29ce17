"""What goes into the catalog and what comes out: plain frozen records, never live ORM rows.

:class:`InstanceHeader` (from :mod:`bonect.dicom.header`, re-exported here) is what the receive
path knows of one received instance; the ``*Record`` classes are snapshots the catalog returns,
safe to keep after the session that read them is closed and to hand between threads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bonect.catalog.jobs import JobState
from bonect.catalog.tables import Job, Role, Send, SendStatus, Series, SettleState
from bonect.dicom.geometry import Orientation as Orientation
from bonect.dicom.geometry import Vector3 as Vector3
from bonect.dicom.header import InstanceHeader as InstanceHeader  # re-exported
from bonect.dicom.header import patient_key as patient_key
from bonect.uncertainty import summary


def join_floats(values: Sequence[float] | None) -> str | None:
    """Floats as DICOM-like backslash-separated text (exact round trip), or None."""
    return None if values is None else "\\".join(repr(float(v)) for v in values)


def split_floats(text: str | None) -> tuple[float, ...] | None:
    """The inverse of :func:`join_floats`; None for missing or unreadable text."""
    if not text:
        return None
    try:
        return tuple(float(part) for part in text.split("\\"))
    except ValueError:
        return None


@dataclass(frozen=True)
class InstanceRecord:
    """One instance as the catalog holds it after :meth:`Catalog.record_instance`."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    path: Path
    instance_number: int | None
    received_at: datetime
    created: bool = True  # False: a re-sent instance replaced an earlier copy
    reopened: bool = False  # True: the series had settled and is open again


@dataclass(frozen=True)
class SeriesRecord:
    """A series as the catalog holds it; satisfies :class:`bonect.rules.SeriesFields`."""

    series_uid: str
    study_uid: str
    modality: str
    series_description: str
    protocol_name: str
    sequence_name: str
    image_type: tuple[str, ...]
    manufacturer: str
    patient_key: str
    frame_of_reference_uid: str
    instance_count: int
    expected_count: int | None
    first_received_at: datetime
    last_received_at: datetime
    last_association_id: str | None
    association_released_at: datetime | None
    revision: int
    role: Role | None
    settle_state: SettleState
    settled_at: datetime | None
    calling_ae: str | None = None  # who sent its last instance over DICOM (None: drop folder)
    association_aborted_at: datetime | None = None  # its last association aborted: maybe cut

    @classmethod
    def from_row(cls, row: Series) -> SeriesRecord:
        return cls(
            series_uid=row.series_uid,
            study_uid=row.study.study_uid,
            modality=row.modality,
            series_description=row.series_description,
            protocol_name=row.protocol_name,
            sequence_name=row.sequence_name,
            image_type=tuple(v for v in row.image_type.split("\\") if v),
            manufacturer=row.manufacturer,
            patient_key=row.patient_key,
            frame_of_reference_uid=row.frame_of_reference_uid,
            instance_count=row.instance_count,
            expected_count=row.expected_count,
            first_received_at=row.first_received_at,
            last_received_at=row.last_received_at,
            last_association_id=row.last_association_id,
            association_released_at=row.association_released_at,
            association_aborted_at=row.association_aborted_at,
            revision=row.revision,
            role=row.role,
            settle_state=row.settle_state,
            settled_at=row.settled_at,
            calling_ae=row.calling_ae,
        )


@dataclass(frozen=True)
class SeriesGeometry:
    """The per-instance geometry of a series, for the completeness check of settle."""

    series_uid: str
    positions: tuple[Vector3 | None, ...]
    orientations: tuple[Orientation | None, ...]
    frames: tuple[int, ...]  # NumberOfFrames per instance (1 for single-frame)
    expected_count: int | None


@dataclass(frozen=True)
class UncertaintySummary:
    """Where a job's sCT is unsure: the share (0..1) of the head whose planes disagree by
    more than ``threshold_hu`` (see :mod:`bonect.uncertainty`)."""

    share: float
    threshold_hu: float

    @classmethod
    def from_row(cls, row: Job) -> UncertaintySummary | None:
        if row.uncertain_share is None or row.uncertainty_threshold_hu is None:
            return None
        return cls(row.uncertain_share, row.uncertainty_threshold_hu)

    def text(self) -> str:
        """In words, e.g. ``planes disagree by > 100 HU in 3.2 % of the head``."""
        return summary(self.share, self.threshold_hu)


@dataclass(frozen=True)
class JobRecord:
    """A job as the catalog holds it; workers pass it back to report the outcome."""

    id: int
    series_uid: str
    study_uid: str
    state: JobState
    generation: int
    attempts: int
    claimed_by: str | None
    claimed_at: datetime | None
    not_before: datetime
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    last_error: str | None
    output_dir: Path | None
    model_version: str | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    output_series_uid: str | None = None  # the sCT series this job wrote
    uncertainty: UncertaintySummary | None = None  # None: no planes, or not yet converted
    lease_until: datetime | None = None  # in flight: the claim ends then unless renewed

    @classmethod
    def from_row(cls, row: Job) -> JobRecord:
        return cls(
            id=row.id,
            series_uid=row.series.series_uid,
            study_uid=row.series.study.study_uid,
            state=JobState(row.state),
            generation=row.generation,
            attempts=row.attempts,
            claimed_by=row.claimed_by,
            claimed_at=row.claimed_at,
            not_before=row.not_before,
            created_at=row.created_at,
            updated_at=row.updated_at,
            finished_at=row.finished_at,
            last_error=row.last_error,
            output_dir=Path(row.output_dir) if row.output_dir else None,
            model_version=row.model_version,
            timings=json.loads(row.timings) if row.timings else {},
            output_series_uid=row.output_series_uid,
            uncertainty=UncertaintySummary.from_row(row),
            lease_until=row.lease_until,
        )


JobRef = JobRecord | int
"""A job, by the record a worker was handed or by its id."""


def job_id_of(job: JobRef) -> int:
    return job if isinstance(job, int) else job.id


@dataclass(frozen=True)
class SendRecord:
    """One synthetic-CT instance at one destination."""

    job_id: int
    sop_instance_uid: str
    path: Path
    destination: str
    status: SendStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Send) -> SendRecord:
        return cls(
            job_id=row.job_id,
            sop_instance_uid=row.sop_instance_uid,
            path=Path(row.path),
            destination=row.destination,
            status=SendStatus(row.status),
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            updated_at=row.updated_at,
        )


@dataclass(frozen=True)
class JobTimeline:
    """When things happened to one job and its series, for per-stage timings."""

    job_id: int
    series_uid: str
    attempts: int
    model_version: str | None
    first_received_at: datetime
    last_received_at: datetime
    released_at: datetime | None
    created_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float] = field(default_factory=dict)
    generation: int = 1
    uncertainty: UncertaintySummary | None = None

    @classmethod
    def from_rows(cls, job: Job, series: Series) -> JobTimeline:
        timings = json.loads(job.timings) if job.timings else {}
        return cls(
            job_id=job.id,
            series_uid=series.series_uid,
            attempts=job.attempts,
            model_version=job.model_version,
            generation=job.generation,
            first_received_at=series.first_received_at,
            last_received_at=series.last_received_at,
            released_at=series.association_released_at,
            created_at=job.created_at,
            claimed_at=job.claimed_at,
            finished_at=job.finished_at,
            timings={str(k): float(v) for k, v in timings.items()},
            uncertainty=UncertaintySummary.from_row(job),
        )

    def stages(self) -> list[tuple[str, float]]:
        """Seconds per stage, in order: receive, settle wait, queue wait, the worker's stages
        (read, convert, write, send) and the total from the series' completion to done.

        The settle wait counts from the association's release when there was one, else from
        the last instance received (the quiet timer's start).
        """
        start = self.last_received_at
        if self.released_at is not None and self.released_at >= self.last_received_at:
            start = self.released_at
        stages = [("receive", _seconds(self.first_received_at, self.last_received_at))]
        stages.append(("settle wait", _seconds(start, self.created_at)))
        if self.claimed_at is not None:
            stages.append(("queue wait", _seconds(self.created_at, self.claimed_at)))
        stages.extend(self.timings.items())
        if self.finished_at is not None:
            label = "release to done" if start == self.released_at else "last instance to done"
            stages.append((label, _seconds(start, self.finished_at)))
        return stages


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


@dataclass(frozen=True)
class SeriesFiles:
    """A settled series and the archived files of its instances (for the trainer's pairing)."""

    series_uid: str
    role: Role | None
    manufacturer: str
    image_type: tuple[str, ...]
    patient_key: str
    study_date: str
    revision: int
    files: tuple[Path, ...]
