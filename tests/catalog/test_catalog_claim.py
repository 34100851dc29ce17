"""Claiming is atomic: several catalogs and threads on one database never share a job.

Each race runs on SQLite and on PostgreSQL (see conftest.py): on SQLite write transactions run
one at a time; on PostgreSQL the claims really overlap, and ``FOR UPDATE SKIP LOCKED`` plus the
conditional ``UPDATE`` are what keep two workers off one job, and off one series.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from bonect.catalog import Catalog, JobState
from bonect.catalog.queue import claimable_jobs
from bonect.catalog.tables import Base
from catalog.catalog_support import FakeClock, header, receive

JOBS = 60
CATALOGS = 2
THREADS_PER_CATALOG = 4
SERIES = 12


def race(url: str, clock: FakeClock) -> None:
    """Queue JOBS jobs, then let CATALOGS x THREADS_PER_CATALOG workers claim them all."""
    catalogs = [Catalog.open(url) for _ in range(CATALOGS)]
    try:
        for k in range(JOBS):
            uid = f"1.2.826.0.1.3680043.8.498.{1000 + k}"
            receive(catalogs[k % CATALOGS], [header(uid)], clock.now())
            catalogs[k % CATALOGS].enqueue_job(uid, clock.now())
        claims: dict[str, list[int]] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(CATALOGS * THREADS_PER_CATALOG)

        def work(catalog: Catalog, name: str) -> None:
            mine: list[int] = []
            claims[name] = mine
            try:
                start.wait()
                while (job := catalog.claim_next(clock.now(), name)) is not None:
                    mine.append(job.id)
                    catalog.finish(job, now=clock.now())
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(catalog, f"c{c}-t{t}"))
            for c, catalog in enumerate(catalogs)
            for t in range(THREADS_PER_CATALOG)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        claimed = [job_id for ids in claims.values() for job_id in ids]
        assert len(claimed) == JOBS
        assert len(set(claimed)) == JOBS  # nobody claimed a job twice
        counts = catalogs[0].counts_by_state()
        assert counts[JobState.DONE] == JOBS and counts[JobState.RUNNING] == 0
        done = catalogs[1].jobs(JobState.DONE)
        assert all(job.attempts == 1 for job in done)
    finally:
        for catalog in catalogs:
            catalog.close()


def test_claims_never_collide(db_url: str, clock: FakeClock) -> None:
    race(db_url, clock)


def test_generations_of_one_series_are_never_in_flight_together(
    db_url: str, clock: FakeClock
) -> None:
    """Per series, generation 1 came back from a worker (``retry_wait``, due, with output) after
    generation 2 was queued: racing workers take generation 2 only, each once, never two jobs
    of one series at a time, and generation 1 ends superseded."""
    catalogs = [Catalog.open(db_url) for _ in range(CATALOGS)]
    try:
        setup = catalogs[0]
        uids = [f"1.2.826.0.1.3680043.8.498.{2000 + k}" for k in range(SERIES)]
        for uid in uids:
            receive(setup, [header(uid)], clock.now())
            setup.enqueue_job(uid, clock.now())
        olds = []
        while (job := setup.claim_next(clock.now(), "setup")) is not None:
            olds.append(
                setup.mark_converted(job, output_dir=Path("/o"), model_version="m", now=clock.now())
            )
        assert len(olds) == SERIES
        newer = {}
        for uid in uids:
            receive(setup, [header(uid, 1)], clock.now())  # the series grows: generation 2
            newer[uid] = setup.enqueue_job(uid, clock.now())
        for old in olds:
            setup.retry_later(old, at=clock.now(), reason="PACS down", now=clock.now())

        held: dict[str, str] = {}
        overlaps: list[str] = []
        claimed: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(CATALOGS * THREADS_PER_CATALOG)

        def work(catalog: Catalog, name: str) -> None:
            try:
                start.wait()
                while (job := catalog.claim_next(clock.now(), name)) is not None:
                    with lock:
                        if job.series_uid in held:
                            overlaps.append(f"{name} and {held[job.series_uid]}")
                        held[job.series_uid] = name
                        claimed.append(job.id)
                    catalog.finish(job, now=clock.now())
                    with lock:
                        del held[job.series_uid]
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(catalog, f"c{c}-t{t}"))
            for c, catalog in enumerate(catalogs)
            for t in range(THREADS_PER_CATALOG)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert overlaps == []
        assert sorted(claimed) == sorted(newer.values())
        states = {job.id: job.state for job in setup.jobs()}
        assert {states[old.id] for old in olds} == {JobState.SUPERSEDED}
        assert {states[job_id] for job_id in newer.values()} == {JobState.DONE}
    finally:
        for catalog in catalogs:
            catalog.close()


def test_claim_query_locks_rows_on_postgresql() -> None:
    query = claimable_jobs(FakeClock().now())
    assert "FOR UPDATE SKIP LOCKED" in str(query.compile(dialect=postgresql.dialect()))
    assert "FOR UPDATE" not in str(query.compile(dialect=sqlite.dialect()))


def test_schema_compiles_for_postgresql() -> None:
    for table in Base.metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=postgresql.dialect()))
        assert ddl.startswith("\nCREATE TABLE")
