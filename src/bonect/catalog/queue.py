"""The catalog's one front door, :class:`Catalog`: transactions, the job queue and its claims.

Every method opens and commits its own short transaction and returns frozen records, never ORM
rows. Every method that changes something takes ``now`` (aware UTC); nothing here reads a clock.

Claiming is safe with several workers, threads or hosts: the candidate is selected
``FOR UPDATE SKIP LOCKED`` (PostgreSQL; ignored by SQLite, whose write transactions here begin
``IMMEDIATE`` and so run one at a time), then taken with an ``UPDATE … WHERE id = :id AND state
IN ('queued', 'retry_wait')`` whose row count must be 1. A worker proves it still holds a job by
the ``claimed_by`` and ``claimed_at`` of the :class:`JobRecord` it was given; a report from a
worker whose job was taken from it (requeued as an orphan and claimed again) raises
:class:`ClaimLost`.

Of the jobs of one series only the newest generation is ever claimable, and never while
another job of the series is in flight; claiming it supersedes the unfinished older ones. So
on PostgreSQL, where two claims really run at once, the row lock on that one candidate is all
that stands between two workers and the same series, and it is enough.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, and_, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, joinedload, sessionmaker

from bonect.catalog import ingest
from bonect.catalog.engine import open_engine, write_engine
from bonect.catalog.ingest import Settled
from bonect.catalog.jobs import CLAIMABLE, IN_FLIGHT, JobState, transition
from bonect.catalog.models import Instance, Job, Role, Series, SettleState
from bonect.catalog.records import (
    InstanceHeader,
    InstanceRecord,
    JobRecord,
    JobRef,
    SeriesGeometry,
    SeriesRecord,
    job_id_of,
)
from bonect.catalog.sends import SendLedger
from bonect.errors import BonectError, SeriesError

logger = logging.getLogger(__name__)

_CONFLICT_RETRIES = 3
_CLAIM_RACES = 10


class UnknownJob(BonectError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class ClaimLost(BonectError):
    """A worker reported on a job that is no longer its own (it was requeued and reclaimed)."""

    def __init__(self, job_id: int, holder: str | None) -> None:
        super().__init__(f"job {job_id} is no longer held by this worker (now: {holder})")
        self.job_id = job_id


def claimable_jobs(now: datetime) -> Select[int]:
    """The query for the id of the next job to claim at ``now``.

    It locks the row ``FOR UPDATE SKIP LOCKED`` where the database can (PostgreSQL), never
    picks a job whose series has another job in flight, nor one a newer generation of its
    series waits to replace.
    """
    busy = aliased(Job)
    newer = aliased(Job)
    in_flight_sibling = exists().where(busy.series_id == Job.series_id, busy.state.in_(IN_FLIGHT))
    newer_waiting = exists().where(
        newer.series_id == Job.series_id,
        newer.generation > Job.generation,
        newer.state.in_(CLAIMABLE),
    )
    return (
        select(Job.id)
        .where(Job.state.in_(CLAIMABLE), Job.not_before <= now, ~in_flight_sibling, ~newer_waiting)
        .order_by(Job.not_before, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


class SeriesIds:
    """Series UID → series id, of series this catalog recorded instances for (thread-safe).

    A series row never changes its id, so this only saves the lookup; an id is still checked
    by every use (:class:`bonect.catalog.ingest.StaleSeriesId`) in case the row was deleted,
    and forgotten then. At most ``size`` entries, the oldest dropped first.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, series_uid: str) -> int | None:
        with self._lock:
            return self._ids.get(series_uid)

    def put(self, series_uid: str, series_id: int) -> None:
        with self._lock:
            self._ids.pop(series_uid, None)
            self._ids[series_uid] = series_id
            while len(self._ids) > self._size:
                del self._ids[next(iter(self._ids))]

    def forget(self, series_uid: str) -> None:
        with self._lock:
            self._ids.pop(series_uid, None)


class Catalog(SendLedger):
    """Studies, series, instances, jobs and sends over one SQLAlchemy engine.

    Build it with :meth:`open`; the constructor does no I/O.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write_engine = write_engine(engine)
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)
        self._series_ids = SeriesIds()

    @classmethod
    def open(cls, url: str) -> Catalog:
        """Open (creating tables if needed) the catalog at a SQLAlchemy URL."""
        return cls(open_engine(url))

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        """Close the pooled connections."""
        self._engine.dispose()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only session, for queries this class does not offer (trainer pairing)."""
        with self._read() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A session in a write transaction, committed on leaving the block."""
        with self._write.begin() as session:
            yield session

    # -- receive and settle ------------------------------------------------------------------

    def record_instance(
        self,
        header: InstanceHeader,
        path: Path,
        *,
        received_at: datetime,
        association_id: str | None = None,
        calling_ae: str | None = None,
    ) -> InstanceRecord:
        """Record a received instance; idempotent on its SOP Instance UID (the path is replaced).

        A new instance for a settled series re-opens it; settle then queues it again.
        ``calling_ae``: who sent it over DICOM, kept per series to send its sCT back.
        """
        conflicts = 0
        while True:
            known = self._series_ids.get(header.series_uid)
            try:
                with self._write_engine.begin() as connection:  # Core only: no Session
                    record, series_id = ingest.record_instance(
                        connection,
                        header,
                        path,
                        received_at=received_at,
                        association_id=association_id,
                        calling_ae=calling_ae,
                        known_series_id=known,
                    )
            except (IntegrityError, ingest.StaleSeriesId) as exc:
                # a concurrent writer inserted the same study/series/instance, or the cached
                # series id is gone (the foreign key refused it, or the row is another series)
                self._series_ids.forget(header.series_uid)
                conflicts += 1
                if conflicts >= _CONFLICT_RETRIES:
                    raise
                logger.debug("conflict recording %s (%r), again", header.sop_instance_uid, exc)
                continue
            self._series_ids.put(header.series_uid, series_id)  # committed: safe to cache
            return record

    def association_released(self, association_id: str, at: datetime) -> int:
        """Note that an association ended; returns how many open series it fed last."""
        with self._write.begin() as session:
            return ingest.association_released(session, association_id, at)

    def series_to_settle(self, now: datetime, quiet_seconds: float) -> list[SeriesRecord]:
        """Open series quiet for ``quiet_seconds``, or whose last association was released."""
        with self._read() as session:
            return ingest.series_to_settle(session, now, quiet_seconds)

    def series_geometry(self, series_uid: str) -> SeriesGeometry | None:
        with self._read() as session:
            return ingest.series_geometry(session, series_uid)

    def settle_series(
        self, series_uid: str, *, revision: int, role: Role, now: datetime
    ) -> Settled | None:
        """Settle a series unless an instance arrived since ``revision``; queue it if converted."""
        with self._write.begin() as session:
            return ingest.settle_series(session, series_uid, revision=revision, role=role, now=now)

    def enqueue_job(self, series_uid: str, now: datetime) -> int:
        """Queue a conversion of a series (again); returns the job id."""
        with self._write.begin() as session:
            series = session.scalar(select(Series).where(Series.series_uid == series_uid))
            if series is None:
                raise SeriesError(f"unknown series {series_uid}", series_uid=series_uid)
            return ingest.enqueue(session, series, now)

    def series(self, series_uid: str) -> SeriesRecord | None:
        with self._read() as session:
            row = session.scalar(
                select(Series)
                .options(joinedload(Series.study))
                .where(Series.series_uid == series_uid)
            )
            return None if row is None else SeriesRecord.from_row(row)

    def list_series(
        self,
        *,
        role: Role | None = None,
        settle_state: SettleState | None = None,
        settled_before: datetime | None = None,
    ) -> list[SeriesRecord]:
        """Series filtered by role, settle state and settle time (for housekeeping, trainer)."""
        query = select(Series).options(joinedload(Series.study)).order_by(Series.id)
        if role is not None:
            query = query.where(Series.role == role)
        if settle_state is not None:
            query = query.where(Series.settle_state == settle_state)
        if settled_before is not None:
            query = query.where(Series.settled_at < settled_before)
        with self._read() as session:
            return [SeriesRecord.from_row(row) for row in session.scalars(query)]

    def instances(self, series_uid: str) -> list[InstanceRecord]:
        """The instances of a series, in InstanceNumber order (then arrival)."""
        with self._read() as session:
            rows = session.scalars(
                select(Instance)
                .join(Series)
                .where(Series.series_uid == series_uid)
                .order_by(Instance.instance_number, Instance.id)
            )
            return [
                InstanceRecord(
                    sop_instance_uid=row.sop_instance_uid,
                    sop_class_uid=row.sop_class_uid,
                    series_uid=series_uid,
                    path=Path(row.path),
                    instance_number=row.instance_number,
                    received_at=row.received_at,
                )
                for row in rows
            ]

    # -- the job queue -------------------------------------------------------------------------

    def claim_next(self, now: datetime, worker_id: str) -> JobRecord | None:
        """Take the oldest claimable job (``running``, attempts + 1), or None if there is none.

        A job is claimable when queued, or waiting to retry and due; never while another job
        of the same series is in flight.
        """
        candidates = claimable_jobs(now)
        for _ in range(_CLAIM_RACES):
            with self._write.begin() as session:
                job_id = session.scalar(candidates)
                if job_id is None:
                    return None
                result = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state.in_(CLAIMABLE))
                    .values(
                        state=JobState.RUNNING,
                        claimed_by=worker_id[:128],
                        claimed_at=now,
                        updated_at=now,
                        finished_at=None,
                        attempts=Job.attempts + 1,
                    )
                    .execution_options(synchronize_session=False)
                )
                if int(getattr(result, "rowcount", 0) or 0) == 1:
                    row = session.get(Job, job_id, populate_existing=True)
                    if row is None:
                        raise UnknownJob(job_id)
                    ingest.supersede_older(session, row, now)
                    logger.info(
                        "job %d (generation %d) claimed by %s", job_id, row.generation, worker_id
                    )
                    return JobRecord.from_row(row)
            logger.debug("job %d was claimed by another worker first", job_id)
        return None

    def _move(
        self,
        job: JobRef,
        new: JobState,
        *,
        now: datetime,
        reason: str | None = None,
        **changes: Any,
    ) -> JobRecord:
        job_id = job_id_of(job)
        with self._write.begin() as session:
            row = session.get(Job, job_id, with_for_update=True)
            if row is None:
                raise UnknownJob(job_id)
            held = (row.claimed_by, row.claimed_at)
            in_flight = JobState(row.state) in IN_FLIGHT
            if (
                in_flight
                and isinstance(job, JobRecord)
                and held != (job.claimed_by, job.claimed_at)
            ):
                raise ClaimLost(job_id, row.claimed_by)
            transition(row, new, now=now, reason=reason)
            for key, value in changes.items():
                setattr(row, key, value)
            session.flush()
            return JobRecord.from_row(row)

    def mark_converted(
        self,
        job: JobRef,
        *,
        output_dir: Path,
        model_version: str,
        now: datetime,
        output_series_uid: str | None = None,
    ) -> JobRecord:
        """The sCT series (``output_series_uid``) is written to ``output_dir``; next: send it."""
        return self._move(
            job,
            JobState.CONVERTED,
            now=now,
            output_dir=str(output_dir),
            model_version=model_version[:128],
            output_series_uid=output_series_uid,
        )

    def mark_sending(self, job: JobRef, *, now: datetime) -> JobRecord:
        return self._move(job, JobState.SENDING, now=now)

    def finish(
        self, job: JobRef, *, now: datetime, timings: dict[str, float] | None = None
    ) -> JobRecord:
        """Every instance stored at every destination; ``timings``: seconds per stage."""
        changes = {} if timings is None else {"timings": json.dumps(timings)}
        return self._move(job, JobState.DONE, now=now, **changes)

    def fail(self, job: JobRef, reason: str, *, now: datetime) -> JobRecord:
        """A permanent failure; the reason is shown by ``bonect-daemon status``."""
        logger.warning("job %d failed: %s", job_id_of(job), reason)
        return self._move(job, JobState.FAILED, now=now, reason=reason)

    def retry_later(self, job: JobRef, *, at: datetime, reason: str, now: datetime) -> JobRecord:
        """A retryable failure: the job may be claimed again from ``at`` on."""
        return self._move(job, JobState.RETRY_WAIT, now=now, reason=reason, not_before=at)

    def requeue_orphans(self, now: datetime, *, claimed_by_prefix: str | None = None) -> list[int]:
        """Queue again the jobs a dead process left in flight; returns their ids.

        Call it on start, before any worker of this process claims. With several hosts on one
        database pass ``claimed_by_prefix`` (this host's worker-id prefix) to leave the jobs
        of live workers elsewhere alone.
        """
        requeued = []
        with self._write.begin() as session:
            query = select(Job).where(Job.state.in_(IN_FLIGHT)).with_for_update()
            if claimed_by_prefix is not None:
                query = query.where(Job.claimed_by.startswith(claimed_by_prefix, autoescape=True))
            for row in session.scalars(query):
                holder = row.claimed_by
                transition(row, JobState.QUEUED, now=now, reason=f"requeued: {holder} stopped")
                row.not_before = now
                requeued.append(row.id)
        if requeued:
            logger.warning("requeued %d job(s) left in flight: %s", len(requeued), requeued)
        return requeued

    def retry(self, job_id: int, *, now: datetime) -> JobRecord:
        """An operator's retry of a failed job (raises IllegalTransition if it is not failed)."""
        return self._move(job_id, JobState.QUEUED, now=now, not_before=now, attempts=0)

    def retry_failed(self, *, now: datetime) -> list[int]:
        """Retry every failed job; returns their ids."""
        ids = [job.id for job in self.jobs(JobState.FAILED)]
        return [self.retry(job_id, now=now).id for job_id in ids]

    def earlier_jobs(self, job: JobRef) -> list[JobRecord]:
        """The jobs of earlier generations of ``job``'s series, oldest first."""
        job_id = job_id_of(job)
        current = aliased(Job)
        query = (
            select(Job)
            .options(joinedload(Job.series).joinedload(Series.study))
            .join(current, current.series_id == Job.series_id)
            .where(current.id == job_id, Job.generation < current.generation)
            .order_by(Job.generation, Job.id)
        )
        with self._read() as session:
            return [JobRecord.from_row(row) for row in session.scalars(query)]

    def job(self, job_id: int) -> JobRecord | None:
        with self._read() as session:
            row = session.get(Job, job_id)
            return None if row is None else JobRecord.from_row(row)

    def jobs(self, state: JobState | None = None, *, limit: int | None = None) -> list[JobRecord]:
        """Jobs, newest first, optionally only those in ``state``."""
        query = select(Job).options(joinedload(Job.series).joinedload(Series.study))
        if state is not None:
            query = query.where(Job.state == state)
        query = query.order_by(Job.id.desc()).limit(limit)
        with self._read() as session:
            return [JobRecord.from_row(row) for row in session.scalars(query)]

    def counts_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zero included)."""
        counts = dict.fromkeys(JobState, 0)
        with self._read() as session:
            for state, count in session.execute(
                select(Job.state, func.count()).group_by(Job.state)
            ):
                counts[JobState(state)] = int(count)
        return counts

    def oldest_waiting_since(self) -> datetime | None:
        """When the oldest job still waiting for a worker was created (for the age metric)."""
        with self._read() as session:
            return session.scalar(
                select(func.min(Job.created_at)).where(and_(Job.state.in_(CLAIMABLE)))
            )
