"""Recording received instances and settling series: the catalog side of receive and settle.

Functions here take an open :class:`~sqlalchemy.orm.Session` inside a write transaction and
never commit; :class:`bonect.catalog.queue.Catalog` owns the transactions. Counters are bumped
with SQL expressions (``n = n + 1``), so concurrent writers on PostgreSQL never lose a count,
and settling is optimistic: a series is only settled if no instance arrived since it was read
(its ``revision`` is unchanged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, joinedload

from bonect.catalog.jobs import JobState, sources_of, transition
from bonect.catalog.models import Instance, Job, Role, Series, SettleState, Study
from bonect.catalog.records import (
    InstanceHeader,
    InstanceRecord,
    SeriesGeometry,
    SeriesRecord,
    Vector3,
    join_floats,
    split_floats,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settled:
    """A series settled by :func:`settle_series`, with the job queued for it if any."""

    series_uid: str
    role: Role
    job_id: int | None


def _study(session: Session, header: InstanceHeader, now: datetime) -> Study:
    study = session.scalar(select(Study).where(Study.study_uid == header.study_uid))
    if study is None:
        study = Study(
            study_uid=header.study_uid,
            patient_key=header.patient_key,
            patient_id=header.patient_id[:64],
            issuer_of_patient_id=header.issuer_of_patient_id[:64],
            study_date=header.study_date[:8],
            created_at=now,
        )
        session.add(study)
        session.flush()
    return study


def _series(session: Session, header: InstanceHeader, study: Study, at: datetime) -> Series:
    series = session.scalar(select(Series).where(Series.series_uid == header.series_uid))
    if series is None:
        series = Series(
            series_uid=header.series_uid,
            study_id=study.id,
            modality=header.modality[:16],
            series_description=header.series_description[:64],
            protocol_name=header.protocol_name[:64],
            sequence_name=header.sequence_name[:64],
            image_type="\\".join(header.image_type)[:256],
            manufacturer=header.manufacturer[:64],
            patient_key=header.patient_key,
            frame_of_reference_uid=header.frame_of_reference_uid[:64],
            instance_count=0,
            expected_count=header.expected_count,
            first_received_at=at,
            last_received_at=at,
            revision=0,
            settle_state=SettleState.OPEN,
        )
        session.add(series)
        session.flush()
    elif series.expected_count is None and header.expected_count is not None:
        series.expected_count = header.expected_count
    return series


def _touch(
    series: Series, at: datetime, association_id: str | None, calling_ae: str | None
) -> None:
    """Note activity on a series: it is open and its quiet timer starts again."""
    series.last_received_at = max(series.last_received_at, at)
    series.last_association_id = association_id
    series.calling_ae = calling_ae
    series.association_released_at = None
    series.revision = Series.revision + 1


def record_instance(
    session: Session,
    header: InstanceHeader,
    path: Path,
    *,
    received_at: datetime,
    association_id: str | None,
    calling_ae: str | None = None,
) -> InstanceRecord:
    """Add one instance, or replace the path of an instance received before (same SOP UID).

    ``calling_ae`` is the Calling AE Title of the association that delivered it (None from the
    drop folder); the series keeps that of its latest instance, to send its sCT back to it.
    """
    association_id = association_id[:128] if association_id else None
    calling_ae = (calling_ae.strip()[:16] or None) if calling_ae else None
    study = _study(session, header, received_at)
    series = _series(session, header, study, received_at)
    instance = session.scalar(
        select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
    )
    created = instance is None
    reopened = False
    if instance is None:
        instance = Instance(sop_instance_uid=header.sop_instance_uid, series_id=series.id)
        session.add(instance)
        series.instance_count = Series.instance_count + 1
    elif instance.series_id != series.id:  # the same SOP instance now claims another series
        session.execute(
            update(Series)
            .where(Series.id == instance.series_id)
            .values(instance_count=Series.instance_count - 1)
        )
        instance.series_id = series.id
        series.instance_count = Series.instance_count + 1
        created = True
    if created or series.settle_state == SettleState.OPEN:
        if series.settle_state == SettleState.SETTLED:
            series.settle_state = SettleState.OPEN
            series.settled_at = None
            reopened = True
            logger.info(
                "series %s re-opened by instance %s", series.series_uid, header.sop_instance_uid
            )
        _touch(series, received_at, association_id, calling_ae)
    instance.sop_class_uid = header.sop_class_uid
    instance.path = str(path)
    instance.instance_number = header.instance_number
    instance.image_position = join_floats(header.image_position)
    instance.image_orientation = join_floats(header.image_orientation)
    instance.number_of_frames = header.number_of_frames
    instance.association_id = association_id
    instance.received_at = received_at
    session.flush()
    return InstanceRecord(
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        series_uid=header.series_uid,
        path=path,
        instance_number=header.instance_number,
        received_at=received_at,
        created=created,
        reopened=reopened,
    )


def association_released(session: Session, association_id: str, at: datetime) -> int:
    """Mark the open series last fed by ``association_id`` as released; returns how many."""
    result = session.execute(
        update(Series)
        .where(
            Series.last_association_id == association_id[:128],
            Series.settle_state == SettleState.OPEN,
        )
        .values(association_released_at=at)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def series_to_settle(session: Session, now: datetime, quiet_seconds: float) -> list[SeriesRecord]:
    """Open series that are quiet, or whose last association has been released."""
    cutoff = now - timedelta(seconds=quiet_seconds)
    rows = session.scalars(
        select(Series)
        .options(joinedload(Series.study))
        .where(
            Series.settle_state == SettleState.OPEN,
            or_(Series.last_received_at <= cutoff, Series.association_released_at.is_not(None)),
        )
        .order_by(Series.id)
    )
    return [SeriesRecord.from_row(row) for row in rows]


def series_geometry(session: Session, series_uid: str) -> SeriesGeometry | None:
    """Positions, orientations and frame counts of a series' instances (arrival order)."""
    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        return None
    rows = session.execute(
        select(Instance.image_position, Instance.image_orientation, Instance.number_of_frames)
        .where(Instance.series_id == series.id)
        .order_by(Instance.id)
    ).all()
    positions: list[Vector3 | None] = []
    orientations = []
    for position_text, orientation_text, _ in rows:
        p = split_floats(position_text)
        o = split_floats(orientation_text)
        positions.append((p[0], p[1], p[2]) if p is not None and len(p) == 3 else None)
        orientations.append((o[0], o[1], o[2], o[3], o[4], o[5]) if o and len(o) == 6 else None)
    return SeriesGeometry(
        series_uid=series_uid,
        positions=tuple(positions),
        orientations=tuple(orientations),
        frames=tuple(max(1, frames or 1) for _, _, frames in rows),
        expected_count=series.expected_count,
    )


def supersede_older(session: Session, job: Job, now: datetime) -> int:
    """End the unfinished jobs of an earlier generation of ``job``'s series; returns how many.

    Their output, if any, predates instances the newer job converts; a ``done`` job stays done
    (the newer job withdraws its output once its own is stored). One conditional ``UPDATE``,
    so that on PostgreSQL a job a worker claims meanwhile is left alone.
    """
    result = session.execute(
        update(Job)
        .where(
            Job.series_id == job.series_id,
            Job.generation < job.generation,
            Job.state.in_(sources_of(JobState.SUPERSEDED)),
        )
        .values(
            state=JobState.SUPERSEDED,
            updated_at=now,
            finished_at=None,
            last_error=f"superseded by job {job.id} (generation {job.generation})",
        )
        .execution_options(synchronize_session=False)
    )
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        logger.info("job %d supersedes %d unfinished earlier job(s)", job.id, count)
    return count


def enqueue(session: Session, series: Series, now: datetime) -> int:
    """Queue a conversion of ``series``: reuse its latest job while that has produced nothing,
    else start a new generation (which supersedes the unfinished earlier ones)."""
    jobs = session.scalars(
        select(Job).where(Job.series_id == series.id).order_by(Job.id.desc()).with_for_update()
    ).all()
    latest = jobs[0] if jobs else None
    if latest is not None and latest.output_dir is None and latest.output_series_uid is None:
        if latest.state == JobState.QUEUED:
            return latest.id
        if latest.state == JobState.RETRY_WAIT:
            transition(latest, JobState.QUEUED, now=now)
            latest.not_before = now
            return latest.id
    job = Job(
        series_id=series.id,
        state=JobState.QUEUED,
        generation=max((j.generation for j in jobs), default=0) + 1,
        attempts=0,
        not_before=now,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    logger.info(
        "job %d queued for series %s (generation %d)", job.id, series.series_uid, job.generation
    )
    supersede_older(session, job, now)
    return job.id


def settle_series(
    session: Session, series_uid: str, *, revision: int, role: Role, now: datetime
) -> Settled | None:
    """Settle a series read at ``revision`` with ``role``; None if it changed meanwhile."""
    result = session.execute(
        update(Series)
        .where(
            Series.series_uid == series_uid,
            Series.revision == revision,
            Series.settle_state == SettleState.OPEN,
        )
        .values(settle_state=SettleState.SETTLED, settled_at=now, role=role)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(result, "rowcount", 0) or 0) != 1:
        return None
    series = session.scalars(select(Series).where(Series.series_uid == series_uid)).one()
    job_id = enqueue(session, series, now) if role == Role.CONVERT else None
    return Settled(series_uid=series_uid, role=role, job_id=job_id)
