"""Fixtures of the catalog tests: a real SQLite catalog file under tmp_path and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bonect.catalog import Catalog, catalog_url
from catalog.catalog_support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return catalog_url(tmp_path / "var", "")


@pytest.fixture
def catalog(db_url: str) -> Iterator[Catalog]:
    opened = Catalog.open(db_url)
    yield opened
    opened.close()
