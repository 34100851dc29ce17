"""The daemon's C-ECHO of every configured peer: the results land in the catalog."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bonect.catalog import Catalog, catalog_url
from bonect.catalog.peer_checks import last_checks
from bonect.config import Config, SourceConfig
from bonect.daemon.echo_watch import check_peers
from daemon.node_support import LOCALHOST, Pacs
from dicom_peers import free_port

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url(tmp_path, ""))
    yield opened
    opened.close()


def test_every_destination_and_source_is_echoed_and_the_result_kept(
    catalog: Catalog, pacs: Pacs
) -> None:
    down = SourceConfig(name="old-pacs", ae_title="OLD", host=LOCALHOST, port=free_port())
    config = Config(destinations=(pacs.destination("pacs"),), sources=(down,))

    assert check_peers(catalog, config, NOW) == {"destination:pacs": True, "source:old-pacs": False}
    checks = last_checks(catalog)
    assert (
        checks[("destination", "pacs")].ok and checks[("destination", "pacs")].message == "success"
    )
    assert not checks[("source", "old-pacs")].ok
    assert checks[("source", "old-pacs")].checked_at == NOW

    later = datetime(2026, 12, 6, 10, 5, tzinfo=UTC)
    check_peers(catalog, config, later, echo_peer=lambda node, calling: True)
    assert last_checks(catalog)[("source", "old-pacs")].ok  # replaced, one row a peer
    assert len(last_checks(catalog)) == 2


def test_a_peer_whose_echo_raises_is_recorded_failed_and_the_rest_go_on(
    catalog: Catalog, pacs: Pacs
) -> None:
    def broken(node: object, calling: str) -> bool:
        raise OSError("network unreachable")

    config = Config(destinations=(pacs.destination("a"), pacs.destination("b")))
    assert check_peers(catalog, config, NOW, echo_peer=broken) == {
        "destination:a": False,
        "destination:b": False,
    }
    assert "network unreachable" in last_checks(catalog)[("destination", "a")].message
