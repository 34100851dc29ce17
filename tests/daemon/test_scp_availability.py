"""The Storage SCP stays available to allowed peers while others misbehave.

Hostile or careless peers (a vulnerability scanner, a silent TCP connection, random bytes, a
burst from a host that is not allowed) must not lock an allowed modality out: the address
allow-list is applied at accept, before any thread, TLS handshake or association slot; the TLS
handshake runs off the accept thread with a timeout; the association limit counts
associations, not connections; a connection must send its A-ASSOCIATE-RQ within a timeout.
Every refusal is logged with its reason, once per address and reason a minute.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Iterator

import pytest

from bonect.daemon.connection_guard import ConnectionLimits
from bonect.daemon.scp import AccessPolicy, server_tls_context
from daemon.scp_support import Pki, StartNode, associate, rejection

LOOPBACK = "127.0.0.1"
OTHER_LOOPBACK = "127.0.0.2"  # Linux answers on all of 127.0.0.0/8: a second source address


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connect(port: int, opened: list[socket.socket], *, source: str = LOOPBACK) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=5, source_address=(source, 0))
    opened.append(sock)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the node closed this connection (reads EOF or a reset within 20 s: a bound on
    a loaded machine, not a timing)."""
    sock.settimeout(20)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_silent_connection_does_not_delay_a_tls_client(
    start_node: StartNode, pki: Pki, sockets: list[socket.socket]
) -> None:
    node = start_node(ssl_context=server_tls_context(pki.server_cert, pki.server_key, pki.ca))
    connect(node.server.port, sockets)  # a TCP connection that never starts its handshake
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca)
    client.load_cert_chain(pki.client_cert, pki.client_key)

    assoc = associate(node.server.port, tls=client, timeout=5)
    assert assoc.is_established
    assoc.release()


def test_a_failed_tls_handshake_is_logged_with_its_reason(
    start_node: StartNode, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(ssl_context=server_tls_context(pki.server_cert, pki.server_key, pki.ca))
    with caplog.at_level(logging.WARNING, logger="bonect"):
        assert not associate(node.server.port, timeout=5).is_established  # plain TCP
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca)
        assert not associate(node.server.port, tls=anonymous, timeout=5).is_established
    handshakes = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert handshakes, caplog.text
    assert all(LOOPBACK in message for message in handshakes)


def test_fifty_connections_from_a_host_not_allowed_leave_an_allowed_peer_answered(
    start_node: StartNode, sockets: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    policy = AccessPolicy.build(calling_ae_titles=None, networks=[f"{OTHER_LOOPBACK}/32"])
    node = start_node(policy=policy)
    with caplog.at_level(logging.WARNING, logger="bonect"):
        intruders = [connect(node.server.port, sockets) for _ in range(50)]
        assert all(closed_by_peer(sock) for sock in intruders[:3])  # closed at accept

        assoc = associate(node.server.port, bind_address=(OTHER_LOOPBACK, 0), timeout=5)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    messages = [r.getMessage() for r in caplog.records]
    refusals = [m for m in messages if "source address not allowed" in m]
    assert 1 <= len(refusals) <= 2, refusals  # once per address and reason, not 50 times


@pytest.mark.parametrize("close", [False, True], ids=["left-open", "closed"])
def test_fifty_connections_of_random_bytes_leave_c_echo_answered(
    start_node: StartNode, sockets: list[socket.socket], close: bool
) -> None:
    node = start_node()
    for _ in range(50):
        sock = connect(node.server.port, sockets)
        sock.sendall(os.urandom(64))
        if close:
            sock.close()
    assoc = associate(node.server.port, timeout=5)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_silent_connections_beyond_the_pending_limit_are_closed_at_once(
    start_node: StartNode, sockets: list[socket.socket]
) -> None:
    node = start_node(limits=ConnectionLimits(max_associations=2, max_pending=3))
    silent = [connect(node.server.port, sockets) for _ in range(3)]
    extra = connect(node.server.port, sockets)
    assert closed_by_peer(extra)
    for sock in silent:
        sock.close()


def test_a_connection_that_never_asks_to_associate_is_dropped_after_the_request_timeout(
    start_node: StartNode, sockets: list[socket.socket]
) -> None:
    node = start_node(limits=ConnectionLimits(request_timeout=1.0))
    assert closed_by_peer(connect(node.server.port, sockets))


def test_the_association_limit_counts_associations_and_is_configurable(
    start_node: StartNode, sockets: list[socket.socket]
) -> None:
    node = start_node(limits=ConnectionLimits(max_associations=2, max_pending=8))
    for _ in range(5):
        connect(node.server.port, sockets)  # connections, not associations: take no slot
    first, second = associate(node.server.port), associate(node.server.port)
    assert first.is_established and second.is_established
    third = associate(node.server.port)
    assert rejection(third) == (0x02, 0x03, 0x02)  # transient, local limit exceeded
    first.release()
    fourth = associate(node.server.port)
    assert fourth.is_established
    second.release()
    fourth.release()
