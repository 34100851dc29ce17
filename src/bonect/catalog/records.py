"""What goes into the catalog and what comes out: plain frozen records, never live ORM rows.

:class:`InstanceHeader` is what the SCP (or the drop folder) knows of one received instance;
the ``*Record`` classes are snapshots the catalog returns, safe to keep after the session that
read them is closed and to hand between threads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bonect.catalog.jobs import JobState
from bonect.catalog.models import Job, Role, Send, SendStatus, Series, SettleState

Vector3 = tuple[float, float, float]
Orientation = tuple[float, float, float, float, float, float]


def patient_key(patient_id: str, issuer_of_patient_id: str = "") -> str:
    """The pseudonymous key of a patient: SHA-256 (hex) of ``issuer \\ PatientID``."""
    return hashlib.sha256(f"{issuer_of_patient_id}\\{patient_id}".encode()).hexdigest()


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
class InstanceHeader:
    """The header fields of one received instance that the catalog keeps.

    ``patient_id`` is kept for pairing and hashed into the patient key; it is never logged.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    modality: str = ""
    patient_id: str = field(default="", repr=False)
    issuer_of_patient_id: str = field(default="", repr=False)
    study_date: str = ""
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    image_type: tuple[str, ...] = ()
    manufacturer: str = ""
    frame_of_reference_uid: str = ""
    instance_number: int | None = None
    image_position: Vector3 | None = None
    image_orientation: Orientation | None = None
    images_in_acquisition: int | None = None
    number_of_frames: int | None = None

    @property
    def patient_key(self) -> str:
        return patient_key(self.patient_id, self.issuer_of_patient_id)

    @property
    def expected_count(self) -> int | None:
        """How many slices (frames) the series should have, when the header says so."""
        if self.number_of_frames is not None and self.number_of_frames > 1:
            return self.number_of_frames
        return self.images_in_acquisition


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
    """A series as the catalog holds it; satisfies :class:`bonect.daemon.rules.SeriesFields`."""

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
class ModelVersionRecord:
    """A model version known to the catalog."""

    name: str
    version: str
    folder: Path
    promoted_at: datetime | None
