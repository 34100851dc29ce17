"""The catalog's one front door, :class:`Catalog`: transactions over one engine, and receiving.

Every method opens and commits its own short transaction and returns frozen records, never ORM
rows. Every method that changes something takes ``now`` (aware UTC); nothing here reads a clock.
The methods come in parts: receiving and settling here (the SQL in
:mod:`bonect.catalog.ingest`), the life of a job in :mod:`bonect.catalog.lifecycle`, read-only
queries in :mod:`bonect.catalog.queries`, sends and model versions in
:mod:`bonect.catalog.sends`.

A database that does not answer (locked past the busy timeout, a lost connection, a full disk:
SQLAlchemy's ``OperationalError``) raises :class:`CatalogUnavailable`, a
:class:`~bonect.errors.RetryableError`: whoever called may simply try again later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bonect.catalog import ingest
from bonect.catalog.engine import open_engine, write_engine
from bonect.catalog.ingest import Settled
from bonect.catalog.lifecycle import ClaimLost, JobLifecycle, UnknownJob, claimable_jobs
from bonect.catalog.queries import CatalogQueries
from bonect.catalog.records import InstanceHeader, InstanceRecord, SeriesGeometry, SeriesRecord
from bonect.catalog.sends import SendLedger
from bonect.catalog.tables import Role
from bonect.errors import RetryableError

__all__ = [
    "Catalog",
    "CatalogUnavailable",
    "ClaimLost",
    "SeriesIds",
    "UnknownJob",
    "claimable_jobs",
]

logger = logging.getLogger(__name__)

_CONFLICT_RETRIES = 3


class CatalogUnavailable(RetryableError):
    """The catalog's database did not answer or refused to work for now (retryable)."""


def _unavailable(context: ExceptionContext) -> None:
    """``handle_error`` hook: a database's ``OperationalError`` becomes CatalogUnavailable."""
    error = context.sqlalchemy_exception
    if isinstance(error, OperationalError):
        raise CatalogUnavailable(
            f"the catalog did not answer: {context.original_exception}"
        ) from error


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


class Catalog(JobLifecycle, CatalogQueries, SendLedger):
    """Studies, series, instances, jobs and sends over one SQLAlchemy engine.

    Build it with :meth:`open`; the constructor does no I/O.
    """

    def __init__(self, engine: Engine) -> None:
        if not event.contains(engine, "handle_error", _unavailable):
            event.listen(engine, "handle_error", _unavailable)
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
        """A read-only session, for the catalog's own tests; the rest use the methods."""
        with self._read() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A session in a write transaction, committed on leaving the block (tests only)."""
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
            return ingest.association_ended(session, association_id, at)

    def association_aborted(self, association_id: str, at: datetime) -> int:
        """Note that an association aborted; returns how many open series it fed last."""
        with self._write.begin() as session:
            return ingest.association_ended(session, association_id, at, aborted=True)

    def associations_cut_by_a_stop(self, at: datetime) -> int:
        """At start: mark as aborted the series a stopped process was receiving; how many."""
        with self._write.begin() as session:
            return ingest.associations_cut_by_a_stop(session, at)

    def series_to_settle(self, now: datetime, quiet_seconds: float) -> list[SeriesRecord]:
        """Open series quiet for ``quiet_seconds``, or whose last association ended."""
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
