"""The catalog's read-only questions (status, jobs, the trainer's harvest) and its failures."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from bonect.catalog import Catalog, CatalogUnavailable, JobState, Role
from bonect.errors import RetryableError
from catalog.catalog_support import FakeClock, receive, series_headers


def settled(catalog: Catalog, clock: FakeClock, series_uid: str, role: Role, **kw: Any) -> None:
    receive(catalog, series_headers(3, series_uid, **kw), clock.now(), folder=Path("/a"))
    series = catalog.series(series_uid)
    assert series is not None
    assert catalog.settle_series(series_uid, revision=series.revision, role=role, now=clock.now())


def test_settled_series_files_for_the_trainer(catalog: Catalog, clock: FakeClock) -> None:
    settled(catalog, clock, "1.2.3.1", Role.CONVERT)
    settled(catalog, clock, "1.2.3.2", Role.KEEP_CT, modality="CT")
    receive(catalog, series_headers(2, "1.2.3.3"), clock.now())  # still open: left out
    (mr,) = catalog.settled_series_files(Role.CONVERT)
    assert mr.series_uid == "1.2.3.1" and mr.role is Role.CONVERT
    assert mr.files == tuple(Path("/a") / f"1.2.3.1.{k}" for k in (1, 2, 3))
    assert mr.manufacturer == "Digital Phantom" and mr.image_type[0] == "ORIGINAL"
    assert len(mr.patient_key) == 64 and mr.revision == 3
    (ct,) = catalog.settled_series_files(Role.KEEP_CT)
    assert ct.series_uid == "1.2.3.2" and ct.patient_key == mr.patient_key


def test_timeline_of_the_last_done_job_and_newest_generations(
    catalog: Catalog, clock: FakeClock
) -> None:
    assert catalog.last_done_timeline() is None
    settled(catalog, clock, "1.2.3.1", Role.CONVERT)
    job = catalog.claim_next(clock.advance(5), "w1")
    assert job is not None
    catalog.finish(job, now=clock.advance(30), timings={"convert": 20.0})
    last = catalog.last_done_timeline()
    assert last is not None
    assert (last.job_id, last.series_uid, last.generation) == (job.id, "1.2.3.1", 1)
    assert [name for name, _ in last.stages()] == [
        "receive",
        "settle wait",
        "queue wait",
        "convert",
        "last instance to done",
    ]
    assert catalog.newest_done_generations({"1.2.3.1", "9.9"}) == {"1.2.3.1": 1}


def test_which_series_are_our_own_sct(catalog: Catalog, clock: FakeClock) -> None:
    settled(catalog, clock, "1.2.3.1", Role.CONVERT)
    job = catalog.claim_next(clock.now(), "w1")
    assert job is not None
    catalog.mark_converted(
        job, output_dir=Path("/out"), model_version="m", now=clock.now(), output_series_uid="2.25.7"
    )
    assert catalog.written_sct_series(["2.25.7", "1.2.3.1"]) == {"2.25.7"}
    assert catalog.written_sct_series([]) == set()


def test_requeue_the_jobs_of_one_worker(catalog: Catalog, clock: FakeClock) -> None:
    settled(catalog, clock, "1.2.3.1", Role.CONVERT)
    settled(catalog, clock, "1.2.3.2", Role.CONVERT)
    mine = catalog.claim_next(clock.now(), "host:1:0")
    theirs = catalog.claim_next(clock.now(), "host:1:01")
    assert mine is not None and theirs is not None
    assert catalog.requeue_orphans(clock.now(), claimed_by="host:1:0") == [mine.id]
    assert catalog.job(theirs.id) is not None
    assert catalog.counts_by_state()[JobState.RUNNING] == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_database_that_does_not_answer_is_retryable(catalog: Catalog) -> None:
    def locked(*args: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    event.listen(catalog.engine, "before_cursor_execute", locked)
    with pytest.raises(CatalogUnavailable, match="database is locked") as raised:
        catalog.counts_by_state()
    assert isinstance(raised.value, RetryableError)
    event.remove(catalog.engine, "before_cursor_execute", locked)
    assert catalog.counts_by_state()[JobState.QUEUED] == 0
    assert Catalog(catalog.engine).jobs() == []  # a second front door adds no second hook
