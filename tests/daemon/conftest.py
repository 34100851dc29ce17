"""Shared fixtures of the daemon tests: in-process PACS and the whole node over them.

A PACS here is a pynetdicom Storage SCP on port 0 that keeps every dataset it is sent
(:class:`daemon.node_support.Pacs`); :func:`make_pacs` starts one under any AE title,
optionally refusing some SOP classes. :func:`open_node` builds a :class:`Node` (port 0, a
temporary storage folder, no metrics server, the classical method on the CPU) whose
destinations are such PACS; tests drive it with :meth:`Node.step` and a fake clock, never
sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bonect.config import (
    Config,
    ConverterConfig,
    Destination,
    MetricsConfig,
    NodeConfig,
    SenderConfig,
    StorageConfig,
)
from bonect.daemon.archive import Archive
from bonect.daemon.node import Node
from bonect.daemon.receive import Receiver
from bonect.daemon.scp import StorageServer
from catalog.catalog_support import FakeClock
from daemon.node_support import LOCALHOST, MakePacs, OpenNode, Pacs
from daemon.scp_support import NOW, FakeDisk, Pki, RecordingSink, ScpNode, StartNode, make_pki


@pytest.fixture
def make_pacs() -> Iterator[MakePacs]:
    """A factory: ``make_pacs(ae_title="PACS", refuse=(sop class UIDs...))``; all shut down."""
    started: list[AE] = []

    def make(ae_title: str = "PACS", *, refuse: Sequence[str] = ()) -> Pacs:
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = [
            cx for cx in AllStoragePresentationContexts if cx.abstract_syntax not in refuse
        ]
        ae.add_supported_context(Verification)  # answers C-ECHO, as a PACS does
        holder: list[Pacs] = []

        def on_store(event: Event) -> int:
            return holder[0].on_store(event)

        server = ae.start_server(
            (LOCALHOST, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        if server is None:
            raise RuntimeError("the in-process PACS did not start")
        started.append(ae)
        holder.append(Pacs(ae_title, server))
        return holder[0]

    yield make
    for ae in started:
        ae.shutdown()


@pytest.fixture
def pacs(make_pacs: MakePacs) -> Pacs:
    return make_pacs()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_node(tmp_path: Path, clock: FakeClock) -> Iterator[OpenNode]:
    """A factory: ``open_node(destinations, sender=SenderConfig(...))``; all closed after."""
    opened: list[Node] = []

    def open_(destinations: Sequence[Destination], *, sender: SenderConfig | None = None) -> Node:
        config = Config(
            node=NodeConfig(port=0),
            storage=StorageConfig(dir=tmp_path / f"var{len(opened)}", reserve_mb=0),
            converter=ConverterConfig(model="auto", device="cpu"),  # nothing promoted: classical
            metrics=MetricsConfig(enabled=False),
            sender=sender or SenderConfig(),
            destinations=tuple(destinations),
        )
        opened.append(Node.open(config, clock=clock.now))
        return opened[-1]

    yield open_
    for node in opened:
        node.close()


@pytest.fixture
def node(open_node: OpenNode, pacs: Pacs) -> Node:
    """A node whose one destination, ``pacs``, is :func:`pacs`."""
    return open_node([pacs.destination("pacs")])


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    servers: list[StorageServer] = []

    def start(**kwargs: Any) -> ScpNode:
        archive = Archive.open(tmp_path / "var")
        sink = kwargs.pop("sink", RecordingSink())
        disk = FakeDisk()
        receiver = Receiver(
            archive=archive,
            sink=sink,
            reserve_bytes=kwargs.pop("reserve_bytes", 0),
            free_bytes=disk.free_bytes,
            max_dataset_bytes=kwargs.pop("max_dataset_bytes", 2**31),
            clock=lambda: NOW,
        )
        server = StorageServer.start(
            ae_title="BONECT", host="127.0.0.1", port=0, receiver=receiver, **kwargs
        )
        servers.append(server)
        return ScpNode(server, archive, sink, disk)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA and a server and a client certificate signed by it (needs openssl)."""
    return make_pki(tmp_path)
