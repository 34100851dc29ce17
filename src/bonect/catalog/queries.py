"""The catalog's read-only questions: series, instances, jobs and their timelines, as records.

:class:`CatalogQueries` is mixed into :class:`bonect.catalog.queue.Catalog`; each method opens
one short read session and returns frozen records (:mod:`bonect.catalog.records`), never ORM
rows, so that the daemon's commands and the trainer never touch a table themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased, joinedload, selectinload, sessionmaker

from bonect.catalog.jobs import CLAIMABLE, IN_FLIGHT, JobState
from bonect.catalog.records import (
    InstanceRecord,
    JobRecord,
    JobRef,
    JobTimeline,
    SeriesFiles,
    SeriesRecord,
    job_id_of,
)
from bonect.catalog.tables import Instance, Job, Role, Series, SettleState


class CatalogQueries:
    """The read-only methods of :class:`~bonect.catalog.queue.Catalog`."""

    _read: sessionmaker[Session]

    # -- series and instances ------------------------------------------------------------------

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

    def settled_series_files(self, role: Role) -> list[SeriesFiles]:
        """Every settled series of ``role`` with the files of its instances (arrival order)."""
        query = (
            select(Series)
            .where(Series.role == role, Series.settle_state == SettleState.SETTLED)
            .options(selectinload(Series.instances), selectinload(Series.study))
            .order_by(Series.id)
        )
        with self._read() as session:
            return [
                SeriesFiles(
                    series_uid=row.series_uid,
                    role=row.role,
                    manufacturer=row.manufacturer,
                    image_type=tuple(v for v in row.image_type.split("\\") if v),
                    patient_key=row.patient_key,
                    study_date=row.study.study_date,
                    revision=row.revision,
                    files=tuple(Path(i.path) for i in sorted(row.instances, key=lambda i: i.id)),
                )
                for row in session.scalars(query)
            ]

    # -- jobs ----------------------------------------------------------------------------------

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

    def holders_in_flight(self, claimed_by_prefix: str = "") -> set[str]:
        """The workers (``claimed_by``) that hold a job in flight, those starting with a prefix."""
        query = select(Job.claimed_by).where(
            Job.state.in_(IN_FLIGHT),
            Job.claimed_by.startswith(claimed_by_prefix, autoescape=True),
        )
        with self._read() as session:
            return {holder for holder in session.scalars(query.distinct()) if holder is not None}

    def earlier_jobs(self, job: JobRef) -> list[JobRecord]:
        """The jobs of earlier generations of ``job``'s series, oldest first."""
        current = aliased(Job)
        query = (
            select(Job)
            .options(joinedload(Job.series).joinedload(Series.study))
            .join(current, current.series_id == Job.series_id)
            .where(current.id == job_id_of(job), Job.generation < current.generation)
            .order_by(Job.generation, Job.id)
        )
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
            return session.scalar(select(func.min(Job.created_at)).where(Job.state.in_(CLAIMABLE)))

    def last_done_timeline(self) -> JobTimeline | None:
        """The timeline of the job that finished last, or None when no job is done."""
        query = (
            select(Job, Series)
            .join(Series, Job.series_id == Series.id)
            .where(Job.state == JobState.DONE)
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(1)
        )
        with self._read() as session:
            row = session.execute(query).first()
            if row is None:
                return None
            job, series = row
            return JobTimeline.from_rows(job, series)

    def newest_done_generations(self, series_uids: Iterable[str]) -> dict[str, int]:
        """The newest generation done of each of these series (those with one done)."""
        query = (
            select(Series.series_uid, func.max(Job.generation))
            .join(Job, Job.series_id == Series.id)
            .where(Job.state == JobState.DONE, Series.series_uid.in_(set(series_uids)))
            .group_by(Series.series_uid)
        )
        with self._read() as session:
            return {str(uid): int(generation) for uid, generation in session.execute(query)}

    def written_sct_series(self, series_uids: Iterable[str]) -> set[str]:
        """Which of these series UIDs are synthetic-CT series one of our jobs wrote."""
        wanted = set(series_uids)
        if not wanted:
            return set()
        query = select(Job.output_series_uid).where(Job.output_series_uid.in_(wanted))
        with self._read() as session:
            return {str(uid) for uid in session.scalars(query)}
