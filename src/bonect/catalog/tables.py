"""The catalog's tables: studies, series, instances, jobs, sends and model versions (SQLAlchemy 2).

Every time is stored as naive UTC and handed back aware (:class:`UTCDateTime`); a naive
datetime given to the catalog is a programming error and raises. Enums are stored as their
string values in plain VARCHAR columns, so the schema is the same on SQLite and PostgreSQL.

The raw PatientID is kept on :class:`Study` for pairing MR with CT of the same patient; it is
never logged. Everything else refers to a patient through :attr:`Series.patient_key`.

There are no migrations yet: :func:`bonect.catalog.engine.open_engine` creates missing tables
and adds missing *nullable* columns to a catalog made by an earlier version; anything else
(a new NOT NULL column, a changed type) needs a migration tool before it is released.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bonect.catalog.jobs import JobState

UID = String(64)


class Role(StrEnum):
    """What the daemon does with a settled series (decided by the rules)."""

    CONVERT = "convert"  # bone MR: convert to synthetic CT
    KEEP_CT = "keep_ct"  # a real CT, kept for the trainer
    IGNORE = "ignore"  # acknowledged, then cleaned up
    OUTPUT = "output"  # bonect's own synthetic CT coming back


class SettleState(StrEnum):
    """Whether a series may still grow (``open``) or was judged complete (``settled``)."""

    OPEN = "open"
    SETTLED = "settled"


class SendStatus(StrEnum):
    """The fate of one synthetic-CT instance at one destination."""

    PENDING = "pending"  # not yet stored: to be sent (again)
    STORED = "stored"  # the destination answered success or an accepted warning
    FAILED = "failed"  # given up on (permanent refusal or the retry cap)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime, stored naive UTC on every dialect; naive input raises."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime given to the catalog: {value!r}")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum(cls: type[StrEnum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    """The declarative base of the catalog's tables."""


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_key: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")  # never logged
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (Index("ix_series_settle", "settle_state", "last_received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    protocol_name: Mapped[str] = mapped_column(String(64), default="")
    sequence_name: Mapped[str] = mapped_column(String(64), default="")
    image_type: Mapped[str] = mapped_column(String(256), default="")  # values joined by "\"
    manufacturer: Mapped[str] = mapped_column(String(64), default="")
    patient_key: Mapped[str] = mapped_column(String(64), index=True)
    frame_of_reference_uid: Mapped[str] = mapped_column(UID, default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_count: Mapped[int | None] = mapped_column(Integer)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_association_id: Mapped[str | None] = mapped_column(String(128))
    calling_ae: Mapped[str | None] = mapped_column(String(16))  # of the last instance's sender
    association_released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # the last association aborted (not released): the series may be cut short
    association_aborted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revision: Mapped[int] = mapped_column(Integer, default=0)  # +1 per instance received
    role: Mapped[Role | None] = mapped_column(_enum(Role, "series_role"))
    settle_state: Mapped[SettleState] = mapped_column(
        _enum(SettleState, "settle_state"), default=SettleState.OPEN
    )
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    jobs: Mapped[list[Job]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    image_position: Mapped[str | None] = mapped_column(String(128))  # "x\y\z" in mm
    image_orientation: Mapped[str | None] = mapped_column(String(256))  # six cosines
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    association_id: Mapped[str | None] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "state", "not_before"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.QUEUED)
    generation: Mapped[int] = mapped_column(Integer, default=1)  # 2+: re-opened series
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # in flight: the holder's claim ends then unless renewed, and the job is queued again;
    # None: no lease (held until reported, or until its host's daemon starts again)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    output_dir: Mapped[str | None] = mapped_column(Text)
    output_series_uid: Mapped[str | None] = mapped_column(UID)  # the sCT series it wrote
    model_version: Mapped[str | None] = mapped_column(String(128))
    timings: Mapped[str | None] = mapped_column(Text)  # JSON: seconds per stage
    # the share (0..1) of the head whose planes disagree by more than the threshold (HU) the
    # model was judged against; None: no planes (classical map) or converted before they were kept
    uncertain_share: Mapped[float | None] = mapped_column(Float)
    uncertainty_threshold_hu: Mapped[float | None] = mapped_column(Float)

    series: Mapped[Series] = relationship(back_populates="jobs")
    sends: Mapped[list[Send]] = relationship(back_populates="job")


class Send(Base):
    """One synthetic-CT instance at one destination."""

    __tablename__ = "sends"
    __table_args__ = (
        UniqueConstraint("job_id", "sop_instance_uid", "destination", name="uq_send"),
        Index("ix_sends_job_status", "job_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(64))
    status: Mapped[SendStatus] = mapped_column(
        _enum(SendStatus, "send_status"), default=SendStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship(back_populates="sends")
