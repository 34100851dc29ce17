"""The daemon's loops (daemon/loop.py) and the idle cost of the listener (connection_guard)."""

from __future__ import annotations

import gc
import threading
from datetime import UTC, datetime, timedelta

import pytest

from bonect.daemon.connection_guard import GuardedAssociationServer
from bonect.daemon.loop import StepGuard, run_loop
from bonect.daemon.sender import RetryPolicy
from bonect.errors import RetryableError

NOW = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


def test_a_failing_duty_keeps_what_the_step_did_and_backs_off() -> None:
    guard = StepGuard(RetryPolicy(initial_seconds=1.0, cap_seconds=60.0), name="test step")
    calls: list[str] = []

    def works() -> bool:
        calls.append("works")
        return True

    def fails() -> bool:
        calls.append("fails")
        raise RetryableError("the catalog did not answer")

    def never() -> bool:
        calls.append("never")
        return False

    assert guard.attempt(NOW, works, fails, never) is True  # the job done before counts
    assert calls == ["works", "fails"] and guard.failed_steps == 1
    assert guard.resume_at is not None and guard.resume_at > NOW
    assert guard.attempt(NOW, works) is False and calls[-1] == "fails"  # backing off: not run
    assert guard.attempt(guard.resume_at, works) is True
    assert (guard.failed_steps, guard.resume_at) == (0, None)


def test_the_loop_waits_on_its_event_up_to_its_cap_and_stops_when_told() -> None:
    guard = StepGuard(RetryPolicy(initial_seconds=1.0, cap_seconds=60.0))
    stop, wake = threading.Event(), threading.Event()
    steps: list[datetime] = []

    def step(now: datetime) -> bool:
        steps.append(now)
        if len(steps) == 3:
            stop.set()
        wake.set()  # the event cuts every idle wait short: no sleeping here
        return False

    run_loop(stop, step, guard, wake, lambda: NOW, idle_cap=30.0)
    assert len(steps) == 3


def test_an_idle_listener_runs_no_garbage_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's server collects garbage every 60 polls (30 s; ~0.1 s each with PyTorch
    loaded): the guarded server only when a connection came since its last collection."""
    server = GuardedAssociationServer.__new__(GuardedAssociationServer)  # no socket: polls only
    server._gc = [0, 59]  # as pynetdicom's AssociationServer.__init__ sets it
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    for _ in range(200):
        server.service_actions()
    assert collected == []
    server._accepted_since_collect = True  # as get_request() sets it on a connection
    for _ in range(200):
        server.service_actions()
    assert collected == [1]  # once after the connection, then idle again
    assert server._accepted_since_collect is False


def test_the_loop_backs_off_after_a_failed_step() -> None:
    policy = RetryPolicy(initial_seconds=1.0, cap_seconds=60.0)
    guard = StepGuard(policy)
    stop, wake = threading.Event(), threading.Event()
    clock = [NOW]

    def step(now: datetime) -> bool:
        def broken() -> bool:
            raise RetryableError("down")

        worked = guard.attempt(now, broken)
        clock[0] = now + timedelta(hours=1)  # the backoff is over at the next look
        if guard.failed_steps == 2:
            stop.set()
        return worked

    run_loop(stop, step, guard, wake, lambda: clock[0])
    assert guard.failed_steps == 2


def test_the_backoff_counts_from_when_a_blocked_step_failed() -> None:
    """A step blocked 35 s (a catalog locked past its busy timeout) backs off from its end."""
    clock = [NOW]
    guard = StepGuard(RetryPolicy(initial_seconds=1.0, cap_seconds=60.0), clock=lambda: clock[0])

    def blocked() -> bool:
        clock[0] = NOW + timedelta(seconds=35)
        raise RetryableError("database is locked")

    guard.attempt(NOW, blocked)
    assert guard.resume_at is not None
    assert guard.resume_at > NOW + timedelta(seconds=35)
