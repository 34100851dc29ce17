"""The job state machine: every legal move works, every other one raises."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from bonect.catalog.jobs import (
    CLAIMABLE,
    IN_FLIGHT,
    LEGAL_TRANSITIONS,
    IllegalTransition,
    JobState,
    transition,
)
from bonect.errors import BonectError

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PAIRS = [(a, b) for a in JobState for b in JobState]


@dataclass
class FakeJob:
    id: int
    state: JobState
    updated_at: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    finished_at: datetime | None = None
    last_error: str | None = None


def test_every_state_has_a_row() -> None:
    assert set(LEGAL_TRANSITIONS) == set(JobState)


@pytest.mark.parametrize(("current", "new"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition_follows_the_table(current: JobState, new: JobState) -> None:
    job = FakeJob(7, current)
    if new in LEGAL_TRANSITIONS[current]:
        transition(job, new, now=NOW, reason="why")
        assert job.state is new
        assert job.updated_at == NOW
        assert job.last_error == "why"
        assert job.finished_at == (NOW if new in (JobState.DONE, JobState.FAILED) else None)
    else:
        with pytest.raises(IllegalTransition) as caught:
            transition(job, new, now=NOW)
        assert isinstance(caught.value, BonectError)
        assert caught.value.job_id == 7
        assert job.state is current  # unchanged
        assert f"{current.value} -> {new.value}" in str(caught.value)


def test_done_is_final() -> None:
    assert LEGAL_TRANSITIONS[JobState.DONE] == frozenset()


def test_claim_and_orphan_moves_are_legal() -> None:
    """The queue moves these in bulk SQL; the table must allow them."""
    assert all(JobState.RUNNING in LEGAL_TRANSITIONS[s] for s in CLAIMABLE)
    assert all(JobState.QUEUED in LEGAL_TRANSITIONS[s] for s in IN_FLIGHT)


def test_states_are_stored_as_their_values() -> None:
    assert JobState("retry_wait") is JobState.RETRY_WAIT
    assert str(JobState.QUEUED) == "queued"
