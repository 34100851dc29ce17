"""The life of a conversion job in the catalog: queued, claimed, reported on, retried, ended.

Every move of a job is here, beside the state machine it follows (:mod:`bonect.catalog.jobs`):
:func:`enqueue` (a new generation supersedes the unfinished older ones), the claim of the next
job, the worker's reports (converted, sending, done, failed, retry later), the requeue of the
orphans of a dead process and an operator's retry. :class:`JobLifecycle` wraps each in its own
short transaction and is mixed into :class:`bonect.catalog.queue.Catalog`, the front door.

Claiming is safe with several workers, threads or hosts: the candidate is selected
``FOR UPDATE SKIP LOCKED`` (PostgreSQL; ignored by SQLite, whose write transactions here begin
``IMMEDIATE`` and so run one at a time), then taken with an ``UPDATE … WHERE id = :id AND state
IN ('queued', 'retry_wait')`` whose row count must be 1. A worker proves it still holds a job by
the ``claimed_by`` and ``claimed_at`` of the :class:`JobRecord` it was given; a report from a
worker whose job was taken from it (requeued as an orphan and claimed again) raises
:class:`ClaimLost`.

A claim may carry a *lease* (``lease_until``): the worker renews it while it works
(:meth:`JobLifecycle.renew_lease`), and a job in flight whose lease has ended is queued again
by the next claim of any worker (:func:`expire_leases`, in the claim's own transaction), keeping
its place in the queue; so the job of a worker that died on another host is taken over within
one lease, without that host coming back. A claim without a lease is held until its holder
reports, or until :meth:`JobLifecycle.requeue_orphans` runs on its host's next start.

Of the jobs of one series only the newest generation is ever claimable, and never while
another job of the series is in flight; claiming it supersedes the unfinished older ones. So
on PostgreSQL, where two claims really run at once, the row lock on that one candidate is all
that stands between two workers and the same series, and it is enough.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, exists, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from bonect.catalog.jobs import CLAIMABLE, IN_FLIGHT, JobState, sources_of, transition
from bonect.catalog.records import JobRecord, JobRef, UncertaintySummary, job_id_of
from bonect.catalog.tables import Job, Series
from bonect.errors import PermanentError, SeriesError

logger = logging.getLogger(__name__)

_CLAIM_RACES = 10


class UnknownJob(PermanentError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class ClaimLost(PermanentError):
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


def expire_leases(session: Session, now: datetime) -> list[int]:
    """Queue again the jobs in flight whose lease ended before ``now``; returns their ids.

    Their holder stopped renewing (it died, hangs, or lost the catalog); the job keeps its
    ``not_before``, so it is the next one claimed, and its output so far (``output_dir``, the
    sends stored) is resumed as after a restart. Rows another transaction holds are skipped
    (``SKIP LOCKED``): a holder renewing its lease right now keeps it.
    """
    rows = session.scalars(
        select(Job)
        .where(Job.state.in_(IN_FLIGHT), Job.lease_until < now)
        .order_by(Job.id)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        ended = row.lease_until.isoformat(timespec="seconds") if row.lease_until else "?"
        reason = f"requeued: the lease of {row.claimed_by} ended at {ended}"
        transition(row, JobState.QUEUED, now=now, reason=reason)
        row.lease_until = None
    if rows:
        session.flush()
        logger.warning("jobs whose lease ended queued again: %s", [row.id for row in rows])
    return [row.id for row in rows]


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


def move(
    session: Session,
    job: JobRef,
    new: JobState,
    *,
    now: datetime,
    reason: str | None = None,
    **changes: Any,
) -> JobRecord:
    """Move one job to ``new`` (checking the claim of a :class:`JobRecord` in flight)."""
    job_id = job_id_of(job)
    row = session.get(Job, job_id, with_for_update=True)
    if row is None:
        raise UnknownJob(job_id)
    if isinstance(job, JobRecord) and job.state in IN_FLIGHT:  # a holder's report
        held = (row.claimed_by, row.claimed_at)
        if JobState(row.state) not in IN_FLIGHT or held != (job.claimed_by, job.claimed_at):
            raise ClaimLost(job_id, row.claimed_by)
    transition(row, new, now=now, reason=reason)
    if new not in IN_FLIGHT:
        row.lease_until = None
    for key, value in changes.items():
        setattr(row, key, value)
    session.flush()
    return JobRecord.from_row(row)


class JobLifecycle:
    """The job methods of :class:`~bonect.catalog.queue.Catalog`: one transaction each."""

    _write: sessionmaker[Session]

    def enqueue_job(self, series_uid: str, now: datetime) -> int:
        """Queue a conversion of a series (again); returns the job id."""
        with self._write.begin() as session:
            series = session.scalar(select(Series).where(Series.series_uid == series_uid))
            if series is None:
                raise SeriesError(f"unknown series {series_uid}", series_uid=series_uid)
            return enqueue(session, series, now)

    def claim_next(
        self, now: datetime, worker_id: str, *, lease: timedelta | None = None
    ) -> JobRecord | None:
        """Take the oldest claimable job (``running``, attempts + 1), or None if there is none.

        A job is claimable when queued, or waiting to retry and due; never while another job
        of the same series is in flight. Jobs in flight whose lease ended are queued again
        first (:func:`expire_leases`). With ``lease`` the claim ends at ``now + lease`` unless
        renewed (:meth:`renew_lease`); without, it has no end.
        """
        candidates = claimable_jobs(now)
        lease_until = None if lease is None else now + lease
        for _ in range(_CLAIM_RACES):
            with self._write.begin() as session:
                expire_leases(session, now)
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
                        lease_until=lease_until,
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
                    supersede_older(session, row, now)
                    logger.info(
                        "job %d (generation %d) claimed by %s", job_id, row.generation, worker_id
                    )
                    return JobRecord.from_row(row)
            logger.debug("job %d was claimed by another worker first", job_id)
        return None

    def renew_lease(self, job: JobRecord, *, now: datetime, lease: timedelta) -> datetime:
        """Extend the lease of a job its holder still holds to ``now + lease``; returns that end.

        Raises
        ------
        ClaimLost
            The job is no longer ``job``'s claim: its lease ended and it was queued again
            (and perhaps claimed by another worker), or it was requeued as an orphan.
        """
        until = now + lease
        with self._write.begin() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.state.in_(IN_FLIGHT),
                    Job.claimed_by == job.claimed_by,
                    Job.claimed_at == job.claimed_at,
                )
                .values(lease_until=until)
                .execution_options(synchronize_session=False)
            )
            if int(getattr(result, "rowcount", 0) or 0) != 1:
                raise ClaimLost(
                    job.id, session.scalar(select(Job.claimed_by).where(Job.id == job.id))
                )
        return until

    def _move(
        self,
        job: JobRef,
        new: JobState,
        *,
        now: datetime,
        reason: str | None = None,
        **changes: Any,
    ) -> JobRecord:
        with self._write.begin() as session:
            return move(session, job, new, now=now, reason=reason, **changes)

    def mark_converted(
        self,
        job: JobRef,
        *,
        output_dir: Path,
        model_version: str,
        now: datetime,
        output_series_uid: str | None = None,
        uncertainty: UncertaintySummary | None = None,
    ) -> JobRecord:
        """The sCT series (``output_series_uid``) is written to ``output_dir``; next: send it.

        ``uncertainty``: where its planes disagree (None: a method without planes).
        """
        return self._move(
            job,
            JobState.CONVERTED,
            now=now,
            output_dir=str(output_dir),
            model_version=model_version[:128],
            output_series_uid=output_series_uid,
            uncertain_share=None if uncertainty is None else uncertainty.share,
            uncertainty_threshold_hu=None if uncertainty is None else uncertainty.threshold_hu,
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
        record = self._move(job, JobState.FAILED, now=now, reason=reason)
        logger.warning("job %d failed: %s", record.id, reason)
        return record

    def retry_later(self, job: JobRef, *, at: datetime, reason: str, now: datetime) -> JobRecord:
        """A retryable failure: the job may be claimed again from ``at`` on."""
        return self._move(job, JobState.RETRY_WAIT, now=now, reason=reason, not_before=at)

    def requeue_orphans(
        self,
        now: datetime,
        *,
        claimed_by_prefix: str | None = None,
        claimed_by: str | None = None,
    ) -> list[int]:
        """Queue again the jobs a dead process left in flight; returns their ids.

        Call it on start, before any worker of this process claims. With several hosts on one
        database pass ``claimed_by_prefix`` (this host's worker-id prefix) to leave the jobs
        of live workers elsewhere alone, or ``claimed_by`` (one worker's exact id) for the
        jobs of one worker that lost track of what it held.
        """
        requeued = []
        with self._write.begin() as session:
            query = select(Job).where(Job.state.in_(IN_FLIGHT)).with_for_update()
            if claimed_by_prefix is not None:
                query = query.where(Job.claimed_by.startswith(claimed_by_prefix, autoescape=True))
            if claimed_by is not None:
                query = query.where(Job.claimed_by == claimed_by[:128])
            for row in session.scalars(query):
                holder = row.claimed_by
                transition(row, JobState.QUEUED, now=now, reason=f"requeued: {holder} stopped")
                row.not_before = now
                row.lease_until = None
                requeued.append(row.id)
        if requeued:
            logger.warning("requeued %d job(s) left in flight: %s", len(requeued), requeued)
        return requeued

    def retry(self, job_id: int, *, now: datetime) -> JobRecord:
        """An operator's retry of a failed job (raises IllegalTransition if it is not failed)."""
        return self._move(job_id, JobState.QUEUED, now=now, not_before=now, attempts=0)

    def retry_failed(self, *, now: datetime) -> list[int]:
        """Retry every failed job; returns their ids."""
        with self._write.begin() as session:
            rows = session.scalars(
                select(Job).where(Job.state == JobState.FAILED).order_by(Job.id.desc())
            ).all()
            ids = []
            for row in rows:
                transition(row, JobState.QUEUED, now=now)
                row.not_before = now
                row.attempts = 0
                ids.append(row.id)
        return ids
