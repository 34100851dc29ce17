"""Opening the catalog: URL, SQLite pragmas and transactions, and UTC times."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.exc import StatementError

from bonect.catalog import Catalog, catalog_url, open_engine
from bonect.catalog.engine import engine_url
from catalog.catalog_support import START, header


def test_catalog_url_defaults_to_sqlite_in_storage(tmp_path: Path) -> None:
    assert catalog_url(tmp_path, "") == f"sqlite:///{tmp_path.resolve()}/catalog.sqlite3"
    assert catalog_url(tmp_path, " postgresql://x/y ") == "postgresql://x/y"


def test_sqlite_pragmas_and_tables(tmp_path: Path) -> None:
    engine = open_engine(catalog_url(tmp_path / "new" / "dir", ""))
    assert (tmp_path / "new" / "dir" / "catalog.sqlite3").is_file()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        tables = {
            row[0]
            for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert {"studies", "series", "instances", "jobs", "sends"} <= tables
    assert "model_versions" not in tables  # model versions live in the registry's folder
    engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_write_transactions_begin_immediate(catalog: Catalog) -> None:
    statements: list[str] = []

    def note(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(catalog.engine, "before_cursor_execute", note)
    with catalog.writing() as session:
        session.execute(text("SELECT 1"))
    with catalog.reading() as session:
        session.execute(text("SELECT 1"))
    assert statements == ["BEGIN IMMEDIATE", "SELECT 1", "BEGIN", "SELECT 1"]


def test_reopening_a_file_keeps_its_rows(db_url: str) -> None:
    first = Catalog.open(db_url)
    first.record_instance(header(), Path("/a/1.dcm"), received_at=START)
    first.close()
    again = Catalog.open(db_url)
    assert [i.sop_instance_uid for i in again.instances(header().series_uid)] == [
        header().sop_instance_uid
    ]
    again.close()


def test_times_come_back_aware_utc(catalog: Catalog) -> None:
    record = catalog.record_instance(header(), Path("/a/1.dcm"), received_at=START)
    series = catalog.series(record.series_uid)
    assert series is not None
    assert series.first_received_at == START
    assert series.first_received_at.tzinfo is not None


def test_naive_times_are_refused(catalog: Catalog) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        catalog.record_instance(header(), Path("/a/1.dcm"), received_at=datetime(2026, 1, 1))


def test_a_postgresql_url_without_a_driver_gets_psycopg() -> None:
    assert engine_url("postgresql://u:p@db/bonect").drivername == "postgresql+psycopg"
    assert engine_url("postgresql+pg8000://u@db/x").drivername == "postgresql+pg8000"
    assert engine_url("sqlite:////tmp/x.sqlite3").drivername == "sqlite"


def test_a_catalog_of_an_earlier_version_gets_the_new_columns(db_url: str) -> None:
    """No migrations yet: the nullable columns added since are added when it is opened."""
    open_engine(db_url).dispose()
    engine = create_engine(engine_url(db_url))
    with engine.begin() as conn:  # back to what the previous version created
        conn.execute(text("ALTER TABLE series DROP COLUMN calling_ae"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN output_series_uid"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN uncertain_share"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN uncertainty_threshold_hu"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN lease_until"))
    assert "calling_ae" not in {c["name"] for c in inspect(engine).get_columns("series")}
    engine.dispose()

    upgraded = Catalog.open(db_url)
    try:
        upgraded.record_instance(header(), Path("/a/1.dcm"), received_at=START, calling_ae="MR1")
        series = upgraded.series(header().series_uid)
        assert series is not None and series.calling_ae == "MR1"
        job_id = upgraded.enqueue_job(header().series_uid, START)
        job = upgraded.job(job_id)
        assert job is not None and job.output_series_uid is None
        assert job.uncertainty is None
        claimed = upgraded.claim_next(START, "w1", lease=timedelta(seconds=60))
        assert claimed is not None and claimed.lease_until == START + timedelta(seconds=60)
    finally:
        upgraded.close()
