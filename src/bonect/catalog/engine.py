"""Opening the catalog database: the URL, SQLite's pragmas and transactions, and the schema.

SQLite (the default: one file in the storage folder) runs in WAL mode with a busy timeout,
foreign keys on and ``synchronous=NORMAL``. Python's sqlite3 driver is told to leave
transactions alone, and SQLAlchemy's ``begin`` event emits them instead: ``BEGIN IMMEDIATE``
for connections opened with the ``bonect_write`` execution option (see :func:`write_engine`),
so that a read-modify-write transaction holds the write lock from its first statement and
never fails half-way with "database is locked"; a plain ``BEGIN`` otherwise, so readers never
block anyone. PostgreSQL needs none of this; the queries themselves are dialect-neutral. A
``postgresql://`` URL without a driver gets psycopg (version 3, the ``postgres`` extra).

There are no migrations yet: opening creates the missing tables and adds the missing nullable
columns (:func:`add_missing_columns`), so a catalog written by an earlier version keeps working.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DatabaseError

from bonect.catalog import backfill as _backfill  # noqa: F401  (its table is on Base)
from bonect.catalog import peer_checks as _peer_checks  # noqa: F401  (its table is on Base)
from bonect.catalog import priors as _priors  # noqa: F401  (its tables are on Base)
from bonect.catalog.tables import Base

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
"""How long a SQLite connection waits for another one's write lock before giving up."""

WRITE_OPTION = "bonect_write"
"""Execution option that makes a SQLite transaction start with ``BEGIN IMMEDIATE``."""


def catalog_url(storage_dir: Path, configured: str) -> str:
    """The catalog's database URL: ``configured`` if set, else a SQLite file in ``storage_dir``."""
    if configured.strip():
        return configured.strip()
    return f"sqlite:///{(storage_dir / 'catalog.sqlite3').resolve()}"


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's begin event emits BEGIN instead
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def engine_url(url: str) -> URL:
    """``url`` parsed, with psycopg (3) as the driver of a ``postgresql://`` URL that names none.

    SQLAlchemy 2.0 would pick psycopg2 for it, which bonect does not install.
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is not None:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the nullable columns of the models that the database's tables lack; their names.

    The only schema change done without a migration: it lets a catalog created by an earlier
    version be opened by this one. A missing NOT NULL column raises (it needs a migration).
    """
    inspector = inspect(engine)
    added = []
    for table in Base.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable or column.primary_key:
                raise RuntimeError(
                    f"catalog table {table.name} lacks the NOT NULL column {column.name}: "
                    "this catalog needs a migration"
                )
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(
                        f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"
                    )
            except DatabaseError:  # another process added it first
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
            added.append(f"{table.name}.{column.name}")
    if added:
        logger.warning("catalog upgraded in place: added the column(s) %s", ", ".join(added))
    return added


def open_engine(url: str) -> Engine:
    """Open the catalog database at ``url`` and create any missing table.

    Parameters
    ----------
    url
        A SQLAlchemy URL: ``sqlite:///path/catalog.sqlite3`` (the parent folder is created) or
        ``postgresql+psycopg://user@host/db`` (or any dialect SQLAlchemy knows).

    Returns
    -------
    Engine
        One engine for the whole process; share it, never open one per request.
    """
    parsed = engine_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(parsed, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    add_missing_columns(engine)
    logger.debug("catalog opened: %s", parsed.render_as_string(hide_password=True))
    return engine


def write_engine(engine: Engine) -> Engine:
    """The same engine, with transactions that take SQLite's write lock when they begin."""
    return engine.execution_options(**{WRITE_OPTION: True})
