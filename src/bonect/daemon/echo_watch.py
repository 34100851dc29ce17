"""Is every configured peer answering? A C-ECHO to each ``[[destinations]]`` and ``[[sources]]``
entry every ``[sender] echo_interval_seconds``, on its own thread (a peer that is down costs a
connection timeout there, never a job's time), each result kept in the catalog
(:mod:`bonect.catalog.peer_checks`) for the status page.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from bonect.catalog import peer_checks
from bonect.catalog.queue import Catalog
from bonect.config import Config
from bonect.daemon.sender import DestinationNode, SendTimeouts, echo

if TYPE_CHECKING:
    from bonect.daemon.node import Node

logger = logging.getLogger(__name__)

Echo = Callable[[DestinationNode, str], bool]


def _default_echo(node: DestinationNode, calling_ae: str) -> bool:
    return echo(node, calling_ae, timeouts=SendTimeouts(acse=10.0, dimse=10.0, network=10.0))


def check_peers(
    catalog: Catalog, config: Config, now: datetime, *, echo_peer: Echo = _default_echo
) -> dict[str, bool]:
    """C-ECHO every destination and source once; record and return the results by
    ``kind:name``."""
    peers = [("destination", d.name, d.ae_title, d.host, d.port) for d in config.destinations]
    peers += [("source", s.name, s.ae_title, s.host, s.port) for s in config.sources]
    results = {}
    for kind, name, ae_title, host, port in peers:
        try:
            ok = echo_peer(DestinationNode(ae_title, host, port), config.node.ae_title)
            message = "success" if ok else "no answer or refused"
        except Exception as exc:  # a peer must never end the thread
            ok, message = False, f"failed: {exc!r}"[:200]
        if not ok:
            logger.warning("C-ECHO %s %s (%s@%s:%d): %s", kind, name, ae_title, host, port, message)
        try:
            peer_checks.record_check(catalog, kind, name, ok=ok, message=message, now=now)
        except Exception:
            logger.exception("could not record the C-ECHO of %s %s", kind, name)
        results[f"{kind}:{name}"] = ok
    return results


def start_echo_thread(node: Node, stop: threading.Event) -> threading.Thread | None:
    """Check the peers now, then every ``echo_interval_seconds``; None when off or no peers."""
    config = node.config
    interval = config.sender.echo_interval_seconds
    if interval <= 0 or not (config.destinations or config.sources):
        return None

    def loop() -> None:
        while not stop.is_set():
            check_peers(node.catalog, config, node.clock())
            stop.wait(interval)

    thread = threading.Thread(target=loop, name="bonect-echo", daemon=True)
    thread.start()
    return thread
