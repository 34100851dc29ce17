"""Test helpers of the daemon tests: an in-process PACS, kept apart from the fixtures.

Imported as ``daemon.node_support`` (``tests`` is on the path); the fixtures that start them
are in ``conftest.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from bonect.config import Destination
from bonect.daemon.node import Node

LOCALHOST = "127.0.0.1"


@dataclass
class Pacs:
    """An in-process Storage SCP that keeps every dataset it is sent."""

    ae_title: str
    server: ThreadedAssociationServer
    received: list[Dataset] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def on_store(self, event: Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self.lock:
            self.received.append(dataset)
        return 0x0000

    def of_class(self, sop_class_uid: str) -> list[Dataset]:
        """What it received of one SOP class, in arrival order."""
        with self.lock:
            return [d for d in self.received if d.SOPClassUID == sop_class_uid]

    def destination(self, name: str, **options: object) -> Destination:
        """A ``[[destinations]]`` entry for this PACS."""
        return Destination.model_validate(
            {"name": name, "ae_title": self.ae_title, "host": LOCALHOST, "port": self.port}
            | options
        )


MakePacs = Callable[..., Pacs]
OpenNode = Callable[..., Node]
