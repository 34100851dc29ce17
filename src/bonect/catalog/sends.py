"""Sends in the catalog: one row per sCT instance per destination, planned before the first try.

Sends are planned (one ``pending`` row per instance and destination) before the first attempt,
so that a series half-sent when the process died resumes with exactly the instances not yet
stored, never duplicating one. The functions take a session inside a write transaction and never
commit; :class:`SendLedger` wraps each in its own transaction and is mixed into
:class:`bonect.catalog.queue.Catalog`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bonect.catalog.records import JobRef, SendRecord, job_id_of
from bonect.catalog.tables import Send, SendStatus

logger = logging.getLogger(__name__)


def plan_sends(
    session: Session,
    job_id: int,
    instances: Iterable[tuple[str, Path]],
    destinations: Sequence[str],
    now: datetime,
) -> int:
    """Add a pending send per (instance, destination) pair not yet planned; returns how many."""
    existing = {
        (uid, destination)
        for uid, destination in session.execute(
            select(Send.sop_instance_uid, Send.destination).where(Send.job_id == job_id)
        ).all()
    }
    added = 0
    for sop_instance_uid, path in instances:
        for destination in destinations:
            if (sop_instance_uid, destination) in existing:
                continue
            session.add(
                Send(
                    job_id=job_id,
                    sop_instance_uid=sop_instance_uid,
                    path=str(path),
                    destination=destination,
                    status=SendStatus.PENDING,
                    attempts=0,
                    updated_at=now,
                )
            )
            existing.add((sop_instance_uid, destination))
            added += 1
    session.flush()
    return added


def drop_unplanned(
    session: Session, job_id: int, planned: set[tuple[str, str]]
) -> list[SendRecord]:
    """Delete the sends of a job whose (SOP Instance UID, destination) is not in ``planned``;
    returns them as they were."""
    rows = session.scalars(select(Send).where(Send.job_id == job_id)).all()
    dropped = [row for row in rows if (row.sop_instance_uid, row.destination) not in planned]
    records = [SendRecord.from_row(row) for row in dropped]
    for row in dropped:
        session.delete(row)
    session.flush()
    return records


def record_send(
    session: Session,
    job_id: int,
    sop_instance_uid: str,
    destination: str,
    *,
    status: SendStatus,
    status_code: int | None,
    error: str | None,
    now: datetime,
    path: Path | None = None,
) -> SendRecord:
    """Record one attempt to send an instance to a destination (creating its row if unplanned)."""
    send = session.scalar(
        select(Send)
        .where(
            Send.job_id == job_id,
            Send.sop_instance_uid == sop_instance_uid,
            Send.destination == destination,
        )
        .with_for_update()
    )
    if send is None:
        if path is None:
            raise ValueError(
                f"job {job_id}: send of {sop_instance_uid} to {destination} was never planned"
            )
        send = Send(
            job_id=job_id,
            sop_instance_uid=sop_instance_uid,
            path=str(path),
            destination=destination,
            attempts=0,
        )
        session.add(send)
    send.status = status
    send.attempts = (send.attempts or 0) + 1
    send.last_status_code = status_code
    send.last_error = error
    send.updated_at = now
    if path is not None:
        send.path = str(path)
    session.flush()
    return SendRecord.from_row(send)


def list_sends(session: Session, job_id: int, *, pending_only: bool) -> list[SendRecord]:
    """The sends of a job, by destination then instance; only those not stored if asked."""
    query = select(Send).where(Send.job_id == job_id)
    if pending_only:
        query = query.where(Send.status == SendStatus.PENDING)
    query = query.order_by(Send.destination, Send.id)
    return [SendRecord.from_row(row) for row in session.scalars(query)]


class SendLedger:
    """The send methods of :class:`~bonect.catalog.queue.Catalog`."""

    _read: sessionmaker[Session]
    _write: sessionmaker[Session]

    def plan_sends(
        self,
        job: JobRef,
        instances: Iterable[tuple[str, Path]],
        destinations: Sequence[str],
        *,
        now: datetime,
    ) -> int:
        """Plan a pending send per (SOP Instance UID, path) and destination; returns how many."""
        with self._write.begin() as session:
            return plan_sends(session, job_id_of(job), instances, destinations, now)

    def plan_send_groups(
        self,
        job: JobRef,
        groups: Sequence[tuple[Sequence[tuple[str, Path]], Sequence[str]]],
        *,
        now: datetime,
        replace: bool = False,
    ) -> int:
        """Plan several groups of instances, each to its own destinations, in one transaction
        (the sCT to every destination, its uncertainty object only to those that asked).

        ``replace``: these groups are the job's whole plan so far (a conversion, maybe again
        after a crash): a send of the job not in them is dropped, stored or not. Only a
        conversion by another model than the interrupted one has such sends (the UIDs name the
        model); one that was already tried is logged, since its instance may be at its
        destination, in a series this job no longer sends.
        """
        job_id = job_id_of(job)
        with self._write.begin() as session:
            if replace:
                planned = {
                    (uid, destination)
                    for instances, destinations in groups
                    for uid, _ in instances
                    for destination in destinations
                }
                tried = [s for s in drop_unplanned(session, job_id, planned) if s.attempts > 0]
                if tried:
                    logger.warning(
                        "job %d: converted again by another model; %d instance(s) of the "
                        "interrupted conversion were sent before (%d stored) and stay at %s",
                        job_id,
                        len(tried),
                        sum(s.status is SendStatus.STORED for s in tried),
                        sorted({s.destination for s in tried}),
                    )
            return sum(
                plan_sends(session, job_id, instances, destinations, now)
                for instances, destinations in groups
            )

    def record_send(
        self,
        job: JobRef,
        sop_instance_uid: str,
        destination: str,
        *,
        status: SendStatus,
        now: datetime,
        status_code: int | None = None,
        error: str | None = None,
        path: Path | None = None,
    ) -> SendRecord:
        """Record one send attempt: the new status, the DICOM status code or the error."""
        with self._write.begin() as session:
            return record_send(
                session,
                job_id_of(job),
                sop_instance_uid,
                destination,
                status=status,
                status_code=status_code,
                error=error,
                now=now,
                path=path,
            )

    def pending_sends(self, job: JobRef) -> list[SendRecord]:
        """The sends of a job not yet stored (nor given up), by destination."""
        with self._read() as session:
            return list_sends(session, job_id_of(job), pending_only=True)

    def sends(self, job: JobRef) -> list[SendRecord]:
        """Every send of a job, whatever its status."""
        with self._read() as session:
            return list_sends(session, job_id_of(job), pending_only=False)
