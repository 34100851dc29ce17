"""Fixtures of the catalog tests: a real catalog on SQLite and on PostgreSQL, and a fake clock.

``db_url`` (and ``catalog`` over it) is parametrised: every test that takes it runs on a SQLite
file under tmp_path and on a schema of its own in a throwaway PostgreSQL server
(:mod:`catalog.postgres`, one per session); the PostgreSQL case is skipped, with the reason,
where no server or driver can be had. A test that is about SQLite alone narrows it with
``@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bonect.catalog import Catalog, catalog_url
from catalog.catalog_support import FakeClock
from catalog.postgres import PostgresServer, unavailable

DIALECTS = ("sqlite", "postgresql")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (skips, with the reason, where there is none)."""
    if (reason := unavailable()) is not None:
        pytest.skip(f"PostgreSQL: {reason}")
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty catalog database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return catalog_url(tmp_path / "var", "")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.schema_url()


@pytest.fixture
def catalog(db_url: str) -> Iterator[Catalog]:
    opened = Catalog.open(db_url)
    yield opened
    opened.close()
