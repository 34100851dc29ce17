"""Claiming is atomic: several catalogs and threads on one database never share a job.

The same race runs on SQLite (always) and on a throwaway PostgreSQL cluster started in tmp_path
when the server binaries and a driver are installed and we are not root (initdb refuses root);
otherwise that case is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from bonect.catalog import Catalog, JobState
from bonect.catalog.models import Base
from bonect.catalog.queue import claimable_jobs
from catalog.catalog_support import FakeClock, header, receive

JOBS = 60
CATALOGS = 2
THREADS_PER_CATALOG = 4


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


def test_claims_never_collide_on_sqlite(db_url: str, clock: FakeClock) -> None:
    race(db_url, clock)


def test_claim_query_locks_rows_on_postgresql() -> None:
    query = claimable_jobs(FakeClock().now())
    assert "FOR UPDATE SKIP LOCKED" in str(query.compile(dialect=postgresql.dialect()))
    assert "FOR UPDATE" not in str(query.compile(dialect=sqlite.dialect()))


def test_schema_compiles_for_postgresql() -> None:
    for table in Base.metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=postgresql.dialect()))
        assert ddl.startswith("\nCREATE TABLE")


def _postgres_bin() -> Path | None:
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _driver() -> str | None:
    for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2"), ("pg8000", "pg8000")):
        if importlib.util.find_spec(module) is not None:
            return dialect
    return None


def _run(*args: object) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster in tmp_path on a free port; its URL."""
    bindir, driver = _postgres_bin(), _driver()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed")
    if driver is None:
        pytest.skip("no PostgreSQL driver (psycopg, psycopg2, pg8000) installed")
    if os.geteuid() == 0:
        pytest.skip("initdb refuses to run as root")
    data, sockets, port = tmp_path / "pg", tmp_path / "sock", _free_port()
    sockets.mkdir()
    _run(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run(bindir / "pg_ctl", "-D", data, "-o", options, "-l", tmp_path / "pg.log", "-w", "start")
    try:
        yield f"postgresql+{driver}://postgres@127.0.0.1:{port}/postgres"
    finally:
        _run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")


def test_claims_never_collide_on_postgresql(postgres_url: str, clock: FakeClock) -> None:
    race(postgres_url, clock)
