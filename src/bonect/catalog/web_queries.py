"""Read-only queries behind the status page: jobs with their series, send backlog, catalog health.

Plain functions over a :class:`~bonect.catalog.queue.Catalog`; each opens one read session
(:meth:`Catalog.reading`) and returns frozen records, never ORM rows. Nothing here writes.

:attr:`JobRow.patient_id` is the raw PatientID: the page shows it only with ``[web] show_phi``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import Select, func, select, text

from bonect.catalog.jobs import JobState
from bonect.catalog.queue import Catalog
from bonect.catalog.records import JobTimeline, UncertaintySummary
from bonect.catalog.tables import Job, Send, SendStatus, Series, Study


@dataclass(frozen=True)
class JobRow:
    """One job with what the page shows of its series and its sends."""

    id: int
    state: JobState
    generation: int
    attempts: int
    model_version: str | None
    created_at: datetime
    updated_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    not_before: datetime
    last_error: str | None
    output_dir: Path | None
    output_series_uid: str | None
    series_uid: str
    study_uid: str
    modality: str
    series_description: str
    patient_key: str
    patient_id: str = field(repr=False)  # PHI: shown only with [web] show_phi
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    released_at: datetime | None
    sends: dict[str, dict[SendStatus, int]] = field(default_factory=dict)  # by destination
    timeline: JobTimeline | None = None
    uncertainty: UncertaintySummary | None = None  # where its planes disagree

    def stages(self) -> list[tuple[str, float]]:
        """Seconds per stage (:meth:`JobTimeline.stages`: settle wait, queue wait, read,
        convert, write, send, and from the series' completion to done)."""
        return [] if self.timeline is None else self.timeline.stages()


@dataclass(frozen=True)
class StateAge:
    """How many jobs are in a state, and since when the oldest of them has been in it."""

    state: JobState
    count: int
    oldest_since: datetime | None


@dataclass(frozen=True)
class DestinationBacklog:
    """The sends of one destination by status, the oldest one still pending, the last error."""

    destination: str
    pending: int
    stored: int
    failed: int
    oldest_pending_since: datetime | None
    last_error: str | None
    last_error_at: datetime | None


@dataclass(frozen=True)
class CatalogHealth:
    """Whether the catalog answers, how fast, how big it is, and what it holds."""

    dialect: str
    ping_ms: float
    database_bytes: int | None  # SQLite: the file and its WAL; None elsewhere
    series_by_settle_state: dict[str, int]
    series_by_role: dict[str, int]
    instances: int


def _job_query() -> Select[Job, Series, Study]:
    return (
        select(Job, Series, Study)
        .join(Series, Job.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
    )


def _row(job: Job, series: Series, study: Study) -> JobRow:
    return JobRow(
        id=job.id,
        state=JobState(job.state),
        generation=job.generation,
        attempts=job.attempts,
        model_version=job.model_version,
        created_at=job.created_at,
        updated_at=job.updated_at,
        claimed_at=job.claimed_at,
        finished_at=job.finished_at,
        not_before=job.not_before,
        last_error=job.last_error,
        output_dir=Path(job.output_dir) if job.output_dir else None,
        output_series_uid=job.output_series_uid,
        series_uid=series.series_uid,
        study_uid=study.study_uid,
        modality=series.modality,
        series_description=series.series_description,
        patient_key=series.patient_key,
        patient_id=study.patient_id,
        instance_count=series.instance_count,
        first_received_at=series.first_received_at,
        last_received_at=series.last_received_at,
        released_at=series.association_released_at,
        timeline=JobTimeline.from_rows(job, series),
        uncertainty=UncertaintySummary.from_row(job),
    )


def _with_sends(catalog: Catalog, rows: Sequence[JobRow]) -> list[JobRow]:
    if not rows:
        return []
    counts: dict[int, dict[str, dict[SendStatus, int]]] = {}
    query = (
        select(Send.job_id, Send.destination, Send.status, func.count())
        .where(Send.job_id.in_([r.id for r in rows]))
        .group_by(Send.job_id, Send.destination, Send.status)
    )
    with catalog.reading() as session:
        for job_id, destination, status, count in session.execute(query):
            by_status = counts.setdefault(job_id, {}).setdefault(destination, {})
            by_status[SendStatus(status)] = int(count)
    return [replace(row, sends=counts.get(row.id, {})) for row in rows]


def recent_jobs(catalog: Catalog, limit: int) -> list[JobRow]:
    """The last ``limit`` jobs, newest first, with their series and send counts."""
    query = _job_query().order_by(Job.id.desc()).limit(limit)
    with catalog.reading() as session:
        rows = [_row(job, series, study) for job, series, study in session.execute(query)]
    return _with_sends(catalog, rows)


def job_row(catalog: Catalog, job_id: int) -> JobRow | None:
    """One job with its series and send counts, or None."""
    with catalog.reading() as session:
        result = session.execute(_job_query().where(Job.id == job_id)).first()
        if result is None:
            return None
        job, series, study = result
        row = _row(job, series, study)
    return _with_sends(catalog, [row])[0]


def state_ages(catalog: Catalog) -> list[StateAge]:
    """Every job state with its count and the oldest last change of a job in it."""
    found: dict[JobState, tuple[int, datetime | None]] = {}
    query = select(Job.state, func.count(), func.min(Job.updated_at)).group_by(Job.state)
    with catalog.reading() as session:
        for state, count, oldest in session.execute(query):
            found[JobState(state)] = (int(count), oldest)
    return [StateAge(state, *found.get(state, (0, None))) for state in JobState]


def send_backlog(catalog: Catalog) -> list[DestinationBacklog]:
    """Per destination that has sends: counts by status, the oldest pending, the last error."""
    totals: dict[str, dict[SendStatus, int]] = {}
    oldest: dict[str, datetime] = {}
    errors: dict[str, tuple[str, datetime]] = {}
    with catalog.reading() as session:
        for destination, status, count in session.execute(
            select(Send.destination, Send.status, func.count()).group_by(
                Send.destination, Send.status
            )
        ):
            totals.setdefault(destination, {})[SendStatus(status)] = int(count)
        for destination, since in session.execute(
            select(Send.destination, func.min(Send.updated_at))
            .where(Send.status == SendStatus.PENDING)
            .group_by(Send.destination)
        ):
            oldest[destination] = since
        latest = (
            select(Send.destination, func.max(Send.id).label("id"))
            .where(Send.last_error.is_not(None))
            .group_by(Send.destination)
            .subquery()
        )
        for destination, error, at in session.execute(
            select(Send.destination, Send.last_error, Send.updated_at).join(
                latest, Send.id == latest.c.id
            )
        ):
            errors[destination] = (str(error), at)
    return [
        DestinationBacklog(
            destination=name,
            pending=counts.get(SendStatus.PENDING, 0),
            stored=counts.get(SendStatus.STORED, 0),
            failed=counts.get(SendStatus.FAILED, 0),
            oldest_pending_since=oldest.get(name),
            last_error=errors[name][0] if name in errors else None,
            last_error_at=errors[name][1] if name in errors else None,
        )
        for name, counts in sorted(totals.items())
    ]


def _sqlite_bytes(catalog: Catalog) -> int | None:
    database = catalog.engine.url.database
    if catalog.engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    path = Path(database)
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def catalog_health(catalog: Catalog) -> CatalogHealth:
    """A round trip's time, the database's size (SQLite) and what the catalog holds."""
    with catalog.reading() as session:
        started = time.perf_counter()
        session.execute(text("SELECT 1"))
        ping_ms = (time.perf_counter() - started) * 1000
        settle = {
            str(state): int(n)
            for state, n in session.execute(
                select(Series.settle_state, func.count()).group_by(Series.settle_state)
            )
        }
        roles = {
            str(role) if role is not None else "undecided": int(n)
            for role, n in session.execute(select(Series.role, func.count()).group_by(Series.role))
        }
        instances = int(session.scalar(select(func.sum(Series.instance_count))) or 0)
    return CatalogHealth(
        dialect=catalog.engine.dialect.name,
        ping_ms=ping_ms,
        database_bytes=_sqlite_bytes(catalog),
        series_by_settle_state=settle,
        series_by_role=roles,
        instances=instances,
    )
