"""The job state machine: the states a conversion job goes through and the legal moves between them.

A job is created ``queued`` when a bone-MR series settles. A worker claims it (``running``),
writes the synthetic CT (``converted``), sends it (``sending``) and ends it ``done``. A retryable
error parks it in ``retry_wait`` until its ``not_before`` time, when a worker may claim it again;
a permanent one ends it ``failed``, from where an operator may queue it again. Jobs left
``running``, ``converted`` or ``sending`` by a process that died are queued again on start.

A series re-opened by more instances gets a new job, one *generation* later; an earlier job of
it that had not finished (``queued``, ``retry_wait`` or ``failed``) then ends ``superseded``:
its output, if any, would be stale, and it is never claimed or retried again. A ``done`` job
stays ``done``; the newer generation withdraws its output once its own is stored.

:func:`transition` is the only place that changes a job's state in hand; the queue's few bulk
``UPDATE`` moves (claim, supersede) take their ``WHERE state IN`` from the same table
(:data:`CLAIMABLE`, :func:`sources_of`), so that it is the whole truth about what may happen
to a job.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Protocol

from bonect.errors import PermanentError


class JobState(StrEnum):
    """Where a conversion job stands; the value is what the catalog stores."""

    QUEUED = "queued"
    RUNNING = "running"
    CONVERTED = "converted"
    SENDING = "sending"
    RETRY_WAIT = "retry_wait"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # a newer generation of the same series replaced it unfinished


#: States a worker holds a job in; a job left in one of them by a dead process is an orphan.
IN_FLIGHT: frozenset[JobState] = frozenset({JobState.RUNNING, JobState.CONVERTED, JobState.SENDING})

#: States from which a worker may claim a job (``retry_wait`` only once ``not_before`` passed).
CLAIMABLE: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.RETRY_WAIT})

#: Every legal move; anything else raises :class:`IllegalTransition`.
LEGAL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.SUPERSEDED}),
    JobState.RUNNING: frozenset(
        {
            JobState.CONVERTED,
            JobState.SENDING,
            JobState.DONE,
            JobState.RETRY_WAIT,
            JobState.FAILED,
            JobState.QUEUED,  # orphan of a dead process
        }
    ),
    JobState.CONVERTED: frozenset(
        {JobState.SENDING, JobState.RETRY_WAIT, JobState.FAILED, JobState.QUEUED}
    ),
    JobState.SENDING: frozenset(
        {JobState.DONE, JobState.RETRY_WAIT, JobState.FAILED, JobState.QUEUED}
    ),
    JobState.RETRY_WAIT: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.SUPERSEDED}
    ),
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.SUPERSEDED}),  # QUEUED: an operator
    JobState.DONE: frozenset(),
    JobState.SUPERSEDED: frozenset(),
}


class IllegalTransition(PermanentError):
    """A job was asked to move between two states the state machine does not connect."""

    def __init__(self, job_id: int | None, current: JobState, new: JobState) -> None:
        super().__init__(f"job {job_id}: illegal transition {current.value} -> {new.value}")
        self.job_id = job_id
        self.current = current
        self.new = new


class StatefulJob(Protocol):
    """What :func:`transition` needs of a job: the catalog's ``Job`` row satisfies it."""

    id: int
    state: JobState
    updated_at: datetime
    finished_at: datetime | None
    last_error: str | None


def is_legal(current: JobState, new: JobState) -> bool:
    """Whether the state machine allows moving from ``current`` to ``new``."""
    return new in LEGAL_TRANSITIONS[current]


def sources_of(new: JobState) -> frozenset[JobState]:
    """Every state from which ``new`` is legal: the ``WHERE state IN`` of a bulk move."""
    return frozenset(state for state, targets in LEGAL_TRANSITIONS.items() if new in targets)


def transition(
    job: StatefulJob, new: JobState, *, now: datetime, reason: str | None = None
) -> None:
    """Move ``job`` to ``new`` in place, or raise :class:`IllegalTransition`.

    Parameters
    ----------
    job
        The job row (or anything with its state fields); changed in place.
    new
        The state to move to.
    now
        The current time (aware UTC); becomes ``updated_at``, and ``finished_at`` for an end state.
    reason
        Why, for ``failed`` and ``retry_wait``; kept as ``last_error``. Moving back to
        ``queued`` or on to ``done`` keeps the earlier reason for the record unless one is given.
    """
    current = JobState(job.state)
    if not is_legal(current, new):
        raise IllegalTransition(getattr(job, "id", None), current, new)
    job.state = new
    job.updated_at = now
    job.finished_at = now if new in (JobState.DONE, JobState.FAILED) else None
    if reason is not None:
        job.last_error = reason
