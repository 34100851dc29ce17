"""The node keeps running while its catalog fails mid-job, and the job finishes once it is back.

The catalog's database is made to fail for real: a ``before_cursor_execute`` hook on its engine
raises SQLite's own ``OperationalError("database is locked")`` (what a writer holding the lock
past the busy timeout gives) for every statement while the outage lasts, from a chosen
statement on, so that it strikes in the middle of a job. The node is driven with
:meth:`Node.step` and a fake clock, as in ``test_node.py``: nothing here sleeps.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta
from typing import Any

import pytest
from pynetdicom.events import Event
from sqlalchemy import Engine, event

from bonect.catalog import JobState, SendStatus
from bonect.daemon.node import Node
from bonect.daemon.sender import DestinationNode, send_files
from bonect.phantom.cohort import WrittenPatient
from catalog.catalog_support import FakeClock
from daemon.node_support import LOCALHOST, Pacs, assert_no_patient_identity_logged, mr_files


class CatalogOutage:
    """Every statement on ``engine`` fails from the ``after``-th one containing ``trigger``
    until :meth:`end` is called."""

    def __init__(self, engine: Engine, *, trigger: str, after: int = 1) -> None:
        self.trigger = trigger
        self.after = after
        self.seen = 0
        self.down = False
        self.refused = 0
        self._engine = engine
        event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not self.down and self.trigger in statement:
            self.seen += 1
            self.down = self.seen >= self.after
        if self.down:
            self.refused += 1
            raise sqlite3.OperationalError("database is locked")

    def end(self) -> None:
        self.down = False
        self.trigger = "\0"  # never again
        event.remove(self._engine, "before_cursor_execute", self._before)


def _deliver(node: Node, mr: list[Any]) -> None:
    report = send_files(
        mr, DestinationNode("BONECT", LOCALHOST, node.server.port), calling_ae="MODALITY"
    )
    assert report.all_stored
    assert node.wake.wait(timeout=30.0)  # released: settles at once, no quiet timer


def test_a_catalog_outage_mid_send_backs_off_and_the_job_finishes_after(
    node: Node,
    pacs: Pacs,
    clock: FakeClock,
    phantom_written: WrittenPatient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bonect")
    mr = mr_files(phantom_written)
    _deliver(node, mr)
    outage = CatalogOutage(node.catalog.engine, trigger="UPDATE sends", after=3)

    # the third answer of the PACS cannot be recorded: the send stops, the retry cannot be
    # recorded either, and the worker keeps it
    assert node.step(clock.now()) is True
    assert outage.down
    assert node.failed_steps == 1  # the housekeeping after the job failed too
    assert node.worker.unrecorded is not None
    assert node.worker.unrecorded.state is JobState.RETRY_WAIT
    stored_before = len(pacs.received)
    assert 3 <= stored_before < len(mr)

    # while the catalog is down each step fails, is logged, and the next waits longer
    waits = []
    for _ in range(4):
        now = clock.advance(120)
        assert node.step(now) is False  # never raises
        assert node.resume_at is not None
        waits.append((node.resume_at - now).total_seconds())
        assert node.step(now + timedelta(seconds=0.5)) is False  # backing off: not even tried
    assert waits == [2.0, 4.0, 8.0, 16.0]
    assert node.failed_steps == 5
    refused = outage.refused
    node.step(clock.now())  # inside the backoff: the catalog is not even asked
    assert outage.refused == refused

    # back: the retry is recorded, the job claimed again and the rest sent
    outage.end()
    assert node.step(clock.advance(3600)) is True
    assert (node.failed_steps, node.resume_at, node.worker.unrecorded) == (0, None, None)
    (job,) = node.catalog.jobs()
    assert job.state == JobState.DONE, job.last_error
    assert job.attempts == 2
    assert {s.status for s in node.catalog.sends(job)} == {SendStatus.STORED}
    uids = {d.SOPInstanceUID for d in pacs.received}
    assert len(uids) == len(mr)  # every instance, with the same UIDs as the first attempt
    assert len(pacs.received) <= len(mr) + 1  # at most the unrecorded one is sent twice
    assert_no_patient_identity_logged(caplog, mr)


def test_a_done_job_the_catalog_could_not_record_is_recorded_once_it_is_back(
    node: Node, pacs: Pacs, clock: FakeClock, phantom_written: WrittenPatient
) -> None:
    mr = mr_files(phantom_written)
    _deliver(node, mr)
    outage = CatalogOutage(node.catalog.engine, trigger="timings=?")  # the UPDATE of finish

    assert node.step(clock.now()) is True  # converted and sent; "done" not recorded
    assert node.worker.unrecorded is not None
    assert node.worker.unrecorded.state is JobState.DONE
    assert node.failed_steps == 1  # the housekeeping after it
    assert node.step(clock.advance(60)) is False  # still down: backing off
    assert node.failed_steps == 2

    outage.end()
    assert node.step(clock.advance(60)) is False  # "done" recorded; nothing else to do
    (job,) = node.catalog.jobs()
    assert job.state == JobState.DONE, job.last_error
    assert job.attempts == 1
    assert set(job.timings) >= {"read", "convert", "write", "send"}
    assert len(pacs.received) == len(mr)  # nothing sent twice


def test_a_job_taken_from_the_worker_mid_send_is_left_to_its_new_holder(
    node: Node,
    pacs: Pacs,
    clock: FakeClock,
    phantom_written: WrittenPatient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mr = mr_files(phantom_written)
    _deliver(node, mr)
    store = pacs.on_store
    taken: list[int] = []

    def take_the_job(event_: Event) -> int:
        # as if this worker's process had been declared dead: its job requeued and claimed
        if not taken:
            taken.extend(node.catalog.requeue_orphans(clock.now()))
            assert node.catalog.claim_next(clock.now(), worker_id="elsewhere:1:0") is not None
        return store(event_)

    pacs.on_store = take_the_job
    with caplog.at_level(logging.WARNING, logger="bonect.daemon.worker"):
        assert node.step(clock.now()) is True  # never raises
    assert taken
    assert "no longer held by this worker" in caplog.text
    assert node.worker.unrecorded is None  # nothing to record: the job is not ours
    (job,) = node.catalog.jobs()
    assert (job.state, job.claimed_by) == (JobState.RUNNING, "elsewhere:1:0")
    assert node.failed_steps == 0
