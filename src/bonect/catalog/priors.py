"""The "find priors" tasks: per bone-MR series and source, the search for its patient's CT.

A task (:class:`PriorTask`, one per MR series and ``[[sources]]`` name, created idempotently)
moves through :class:`PriorState`: ``pending`` (due) → ``searching`` (C-FIND) → ``retrieving``
(C-MOVE / C-GET) → ``done`` or ``none_found``; a retryable failure or the source's closed hours
put it in ``waiting`` until ``next_attempt_at``; ``failed`` is final (a permanent error or the
attempt cap). A task found ``searching`` or ``retrieving`` when the daemon starts was
interrupted and is made ``pending`` again (:func:`requeue_interrupted`).

Each CT series a search wants is a :class:`PriorRetrieval` row: its source, study, series,
state and sub-operation counts. That row is the provenance of a retrieved CT: retrieved, from
which source, for which MR series (through its task).

The tables are declared on the catalog's :class:`~bonect.catalog.tables.Base`, so
:func:`bonect.catalog.engine.open_engine` creates them (the engine imports this module).
Functions take a :class:`~bonect.catalog.queue.Catalog` and run one short transaction each.
(Over 400 lines: the two tables, their records and their queries are one unit.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy import (
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from bonect.catalog.tables import UID, Base, Role, Series, SettleState, Study, UTCDateTime

if TYPE_CHECKING:
    from bonect.catalog.queue import Catalog


class PriorState(StrEnum):
    """Where a "find priors" task stands."""

    PENDING = "pending"  # due at next_attempt_at
    SEARCHING = "searching"  # claimed: C-FIND in progress
    RETRIEVING = "retrieving"  # claimed: C-MOVE / C-GET in progress
    DONE = "done"  # every wanted series retrieved (or already in the archive)
    NONE_FOUND = "none_found"  # no CT of this patient the rules keep, in the window
    FAILED = "failed"  # a permanent error or the attempt cap: see reason
    WAITING = "waiting"  # backoff after a retryable error, or outside the allowed hours


class RetrievalState(StrEnum):
    """The fate of one wanted CT series."""

    PENDING = "pending"
    RETRIEVED = "retrieved"
    FAILED = "failed"


CLAIMABLE = (PriorState.PENDING, PriorState.WAITING)
IN_FLIGHT = (PriorState.SEARCHING, PriorState.RETRIEVING)
FINAL = (PriorState.DONE, PriorState.NONE_FOUND, PriorState.FAILED)


def _enum(cls: type[StrEnum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class PriorTask(Base):
    """Find (and retrieve) the CT of the patient of one bone-MR series at one source."""

    __tablename__ = "prior_tasks"
    __table_args__ = (
        UniqueConstraint("mr_series_uid", "source", name="uq_prior_task"),
        Index("ix_prior_tasks_claim", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mr_series_uid: Mapped[str] = mapped_column(UID)
    source: Mapped[str] = mapped_column(String(64))
    state: Mapped[PriorState] = mapped_column(
        _enum(PriorState, "prior_state"), default=PriorState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # failed attempts so far
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)  # why waiting, none found or failed
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PriorRetrieval(Base):
    """One CT series a task wants: the provenance of a retrieved CT."""

    __tablename__ = "prior_retrievals"
    __table_args__ = (UniqueConstraint("task_id", "series_uid", name="uq_prior_retrieval"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("prior_tasks.id"), index=True)
    source: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(UID)
    series_uid: Mapped[str] = mapped_column(UID, index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[RetrievalState] = mapped_column(
        _enum(RetrievalState, "retrieval_state"), default=RetrievalState.PENDING
    )
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class PriorTaskRecord:
    id: int
    mr_series_uid: str
    source: str
    state: PriorState
    attempts: int
    next_attempt_at: datetime
    reason: str | None
    claimed_by: str | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: PriorTask) -> PriorTaskRecord:
        return cls(
            id=row.id,
            mr_series_uid=row.mr_series_uid,
            source=row.source,
            state=PriorState(row.state),
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            reason=row.reason,
            claimed_by=row.claimed_by,
            finished_at=row.finished_at,
        )


@dataclass(frozen=True)
class RetrievalRecord:
    id: int
    task_id: int
    source: str
    study_uid: str
    series_uid: str
    study_date: str
    series_description: str
    expected_instances: int | None
    state: RetrievalState
    completed: int
    failed: int
    reason: str | None

    @classmethod
    def from_row(cls, row: PriorRetrieval) -> RetrievalRecord:
        return cls(
            id=row.id,
            task_id=row.task_id,
            source=row.source,
            study_uid=row.study_uid,
            series_uid=row.series_uid,
            study_date=row.study_date,
            series_description=row.series_description,
            expected_instances=row.expected_instances,
            state=RetrievalState(row.state),
            completed=row.completed,
            failed=row.failed,
            reason=row.reason,
        )


@dataclass(frozen=True)
class WantedSeries:
    """A CT series a search chose to retrieve (the input of :func:`want_series`)."""

    study_uid: str
    series_uid: str
    study_date: str
    series_description: str
    expected_instances: int | None


@dataclass(frozen=True)
class MrPatient:
    """What a search needs of the MR series' patient and study (the PatientID is never logged)."""

    mr_series_uid: str
    patient_id: str
    issuer_of_patient_id: str
    study_date: str  # YYYYMMDD, "" when unknown


def create_task(catalog: Catalog, mr_series_uid: str, source: str, now: datetime) -> int:
    """The id of the task for this MR series and source, created (pending, due now) if new."""
    where = (PriorTask.mr_series_uid == mr_series_uid, PriorTask.source == source)
    for _ in range(2):
        try:
            with catalog.writing() as session:
                found = session.scalar(select(PriorTask.id).where(*where))
                if found is not None:
                    return int(found)
                task = PriorTask(
                    mr_series_uid=mr_series_uid,
                    source=source,
                    state=PriorState.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
                session.add(task)
                session.flush()
                return int(task.id)
        except IntegrityError:  # created concurrently: read it
            continue
    raise RuntimeError(f"cannot create the prior task of {mr_series_uid} at {source}")


def series_without_tasks(catalog: Catalog, source: str) -> list[str]:
    """Settled bone-MR (``convert``) series that have no task for ``source`` yet."""
    has_task = select(PriorTask.id).where(
        PriorTask.mr_series_uid == Series.series_uid, PriorTask.source == source
    )
    query = (
        select(Series.series_uid)
        .where(
            Series.role == Role.CONVERT,
            Series.settle_state == SettleState.SETTLED,
            ~has_task.exists(),
        )
        .order_by(Series.id)
    )
    with catalog.reading() as session:
        return list(session.scalars(query))


def requeue_interrupted(catalog: Catalog, now: datetime) -> list[int]:
    """Tasks left searching or retrieving by a stopped process, made pending again."""
    with catalog.writing() as session:
        ids = list(session.scalars(select(PriorTask.id).where(PriorTask.state.in_(IN_FLIGHT))))
        if ids:
            session.execute(
                update(PriorTask)
                .where(PriorTask.id.in_(ids))
                .values(
                    state=PriorState.PENDING, claimed_by=None, next_attempt_at=now, updated_at=now
                )
            )
        return ids


def claim_next(catalog: Catalog, now: datetime, worker: str) -> PriorTaskRecord | None:
    """Take the next due task (it becomes ``searching``), or None when none is due."""
    with catalog.writing() as session:
        row = session.scalar(
            select(PriorTask)
            .where(PriorTask.state.in_(CLAIMABLE), PriorTask.next_attempt_at <= now)
            .order_by(PriorTask.next_attempt_at, PriorTask.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if row is None:
            return None
        row.state = PriorState.SEARCHING
        row.claimed_by = worker
        row.updated_at = now
        session.flush()
        return PriorTaskRecord.from_row(row)


def _set(catalog: Catalog, task_id: int, now: datetime, **values: object) -> PriorTaskRecord:
    with catalog.writing() as session:
        row = session.get(PriorTask, task_id)
        if row is None:
            raise KeyError(f"no prior task {task_id}")
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = now
        session.flush()
        return PriorTaskRecord.from_row(row)


def set_retrieving(catalog: Catalog, task_id: int, now: datetime) -> PriorTaskRecord:
    return _set(catalog, task_id, now, state=PriorState.RETRIEVING)


def finish(
    catalog: Catalog, task_id: int, state: PriorState, now: datetime, reason: str | None = None
) -> PriorTaskRecord:
    """End a task: ``done``, ``none_found`` or ``failed``, with the reason shown to operators."""
    if state not in FINAL:
        raise ValueError(f"{state} is not a final state")
    return _set(catalog, task_id, now, state=state, reason=reason, finished_at=now, claimed_by=None)


def wait_until(
    catalog: Catalog,
    task_id: int,
    until: datetime,
    reason: str,
    now: datetime,
    *,
    failed_attempt: bool,
) -> PriorTaskRecord:
    """Put a task off until ``until``; ``failed_attempt`` counts it towards the backoff."""
    with catalog.writing() as session:
        row = session.get(PriorTask, task_id)
        if row is None:
            raise KeyError(f"no prior task {task_id}")
        row.state = PriorState.WAITING
        row.next_attempt_at = until
        row.reason = reason
        row.claimed_by = None
        row.updated_at = now
        if failed_attempt:
            row.attempts = row.attempts + 1
        session.flush()
        return PriorTaskRecord.from_row(row)


def want_series(
    catalog: Catalog, task: PriorTaskRecord, wanted: list[WantedSeries], now: datetime
) -> list[RetrievalRecord]:
    """Record the series a search wants (idempotent); every retrieval row of the task."""
    with catalog.writing() as session:
        known = set(
            session.scalars(
                select(PriorRetrieval.series_uid).where(PriorRetrieval.task_id == task.id)
            )
        )
        for w in wanted:
            if w.series_uid in known:
                continue
            session.add(
                PriorRetrieval(
                    task_id=task.id,
                    source=task.source,
                    study_uid=w.study_uid,
                    series_uid=w.series_uid,
                    study_date=w.study_date[:8],
                    series_description=w.series_description[:64],
                    expected_instances=w.expected_instances,
                    state=RetrievalState.PENDING,
                    completed=0,
                    failed=0,
                    updated_at=now,
                )
            )
        session.flush()
        rows = session.scalars(
            select(PriorRetrieval)
            .where(PriorRetrieval.task_id == task.id)
            .order_by(PriorRetrieval.id)
        )
        return [RetrievalRecord.from_row(r) for r in rows]


def retrievals(catalog: Catalog, task_id: int | None = None) -> list[RetrievalRecord]:
    """The retrieval rows of one task (or of all), oldest first."""
    query = select(PriorRetrieval).order_by(PriorRetrieval.id)
    if task_id is not None:
        query = query.where(PriorRetrieval.task_id == task_id)
    with catalog.reading() as session:
        return [RetrievalRecord.from_row(r) for r in session.scalars(query)]


def record_retrieval(
    catalog: Catalog,
    retrieval_id: int,
    state: RetrievalState,
    now: datetime,
    *,
    completed: int = 0,
    failed: int = 0,
    reason: str | None = None,
) -> None:
    """Note the outcome of one series' C-MOVE / C-GET."""
    with catalog.writing() as session:
        session.execute(
            update(PriorRetrieval)
            .where(PriorRetrieval.id == retrieval_id)
            .values(state=state, completed=completed, failed=failed, reason=reason, updated_at=now)
        )


def retrieved_series_uids(catalog: Catalog) -> set[str]:
    """Series UIDs some task retrieved (any source, any MR)."""
    with catalog.reading() as session:
        return set(
            session.scalars(
                select(PriorRetrieval.series_uid).where(
                    PriorRetrieval.state == RetrievalState.RETRIEVED
                )
            )
        )


def tasks(catalog: Catalog, state: PriorState | None = None) -> list[PriorTaskRecord]:
    """Every task (in ``state``), oldest first."""
    query = select(PriorTask).order_by(PriorTask.id)
    if state is not None:
        query = query.where(PriorTask.state == state)
    with catalog.reading() as session:
        return [PriorTaskRecord.from_row(r) for r in session.scalars(query)]


@dataclass(frozen=True, slots=True)
class PriorCounts:
    """Tasks and retrievals by state, and the instances retrieved in all."""

    tasks: dict[PriorState, int]
    retrievals: dict[RetrievalState, int]
    instances_retrieved: int


def counts(catalog: Catalog) -> PriorCounts:
    """For ``status``, the status page and Prometheus: one short read."""
    with catalog.reading() as session:
        by_task = session.execute(select(PriorTask.state, func.count()).group_by(PriorTask.state))
        by_retrieval = session.execute(
            select(PriorRetrieval.state, func.count()).group_by(PriorRetrieval.state)
        )
        instances = session.scalar(select(func.coalesce(func.sum(PriorRetrieval.completed), 0)))
        return PriorCounts(
            {PriorState(state): int(n) for state, n in by_task},
            {RetrievalState(state): int(n) for state, n in by_retrieval},
            int(instances or 0),
        )


def recent_tasks(
    catalog: Catalog, *, limit: int, state: PriorState | None = None
) -> list[PriorTaskRecord]:
    """The latest tasks (in ``state``), newest first."""
    query = select(PriorTask).order_by(PriorTask.id.desc()).limit(limit)
    if state is not None:
        query = query.where(PriorTask.state == state)
    with catalog.reading() as session:
        return [PriorTaskRecord.from_row(r) for r in session.scalars(query)]


def task(catalog: Catalog, task_id: int) -> PriorTaskRecord | None:
    with catalog.reading() as session:
        row = session.get(PriorTask, task_id)
        return None if row is None else PriorTaskRecord.from_row(row)


def mr_patient(catalog: Catalog, mr_series_uid: str) -> MrPatient | None:
    """The PatientID, issuer and study date of an MR series' study; None if unknown."""
    with catalog.reading() as session:
        row = session.execute(
            select(Study.patient_id, Study.issuer_of_patient_id, Study.study_date)
            .join(Series, Series.study_id == Study.id)
            .where(Series.series_uid == mr_series_uid)
        ).one_or_none()
    if row is None:
        return None
    return MrPatient(mr_series_uid, row[0] or "", row[1] or "", row[2] or "")


def series_in_archive(catalog: Catalog, series_uids: list[str]) -> set[str]:
    """Those of ``series_uids`` the catalog already holds (at least one instance)."""
    if not series_uids:
        return set()
    with catalog.reading() as session:
        return set(
            session.scalars(
                select(Series.series_uid).where(
                    Series.series_uid.in_(series_uids), Series.instance_count > 0
                )
            )
        )
