"""The Storage SCP stays available to allowed peers while others misbehave.

Hostile or careless peers (a vulnerability scanner, a silent TCP connection, random bytes, a
burst from a host that is not allowed) must not lock an allowed modality out: the address
allow-list is applied at accept, before any thread, TLS handshake or association slot; the TLS
handshake runs off the accept thread with a timeout; the association limit counts
associations, not connections; a connection must send its A-ASSOCIATE-RQ within a timeout.
Every refusal is logged with its reason, once per address and reason a minute. Malformed PDUs
(a length field of 4 GiB, a truncated A-ASSOCIATE-RQ, P-DATA before an association or cut short
in one) leave C-ECHO answered and every thread alive.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import pytest
from pynetdicom import build_context
from pynetdicom.dimse_messages import C_ECHO_RQ
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bonect.daemon.connection_guard import OTHER_PDU_LIMIT, ConnectionLimits, PduLengthBound
from bonect.daemon.scp import MAXIMUM_PDU_SIZE, AccessPolicy, server_tls_context
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


# Malformed PDUs (PS3.8 9.3): the first bytes of each, as a scanner or a broken peer sends them.


def associate_rq_pdu(called: str = "BONECT") -> bytes:
    """A valid A-ASSOCIATE-RQ proposing Verification, encoded."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "MODALITY", called
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    primitive.user_information = [maximum]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def echo_p_data_pdu() -> bytes:
    """A P-DATA-TF carrying a C-ECHO-RQ on presentation context 1, encoded."""
    request = C_ECHO()
    request.MessageID = 1
    request.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    (primitive,) = message.encode_msg(1, 16384)
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _oversized_associate_rq(sock: socket.socket) -> None:
    sock.sendall(b"\x01\x00\xff\xff\xff\xff" + os.urandom(64))  # says 4 GiB follow


def _truncated_associate_rq(sock: socket.socket) -> None:
    rq = associate_rq_pdu()
    sock.sendall(rq[: len(rq) // 2])


def _p_data_before_association(sock: socket.socket) -> None:
    sock.sendall(echo_p_data_pdu())


def _oversized_p_data_in_association(sock: socket.socket) -> None:
    sock.sendall(associate_rq_pdu())
    assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
    sock.sendall(b"\x04\x00\xff\xff\xff\xf0" + os.urandom(64))  # over any maximum PDU length


def _p_data_cut_short_in_association(sock: socket.socket) -> None:
    sock.sendall(associate_rq_pdu())
    assert sock.recv(1) == b"\x02"
    pdu = echo_p_data_pdu()
    sock.sendall(pdu[: len(pdu) - 10])


MALFORMED: dict[str, Callable[[socket.socket], None]] = {
    "oversized-associate-rq": _oversized_associate_rq,
    "truncated-associate-rq": _truncated_associate_rq,
    "p-data-before-association": _p_data_before_association,
    "oversized-p-data": _oversized_p_data_in_association,
    "p-data-cut-short": _p_data_cut_short_in_association,
}


@pytest.fixture
def thread_deaths() -> Iterator[list[str]]:
    """The threads that die of an exception meanwhile (``threading.excepthook``)."""
    died: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        died.append(f"{args.thread.name if args.thread else '?'}: {args.exc_value!r}")
        previous(args)

    threading.excepthook = hook
    yield died
    threading.excepthook = previous


@pytest.mark.parametrize("close", [False, True], ids=["left-open", "closed"])
@pytest.mark.parametrize("send", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_pdus_leave_c_echo_answered_and_every_thread_alive(
    start_node: StartNode,
    sockets: list[socket.socket],
    thread_deaths: list[str],
    caplog: pytest.LogCaptureFixture,
    send: Callable[[socket.socket], None],
    close: bool,
) -> None:
    node = start_node()
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            sock = connect(node.server.port, sockets)
            send(sock)
            if close:
                sock.close()
        assoc = associate(node.server.port, timeout=5)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    assert not thread_deaths
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("bonect")]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


# A PDU's length field is checked before its body is read (connection_guard.PduLengthBound).


@pytest.mark.parametrize(
    ("associate_first", "header"),
    [
        (False, b"\x01\x00" + (OTHER_PDU_LIMIT + 1).to_bytes(4, "big")),  # A-ASSOCIATE-RQ
        (True, b"\x04\x00" + (MAXIMUM_PDU_SIZE + 1).to_bytes(4, "big")),  # P-DATA-TF
    ],
    ids=["associate-rq-over-the-limit", "p-data-over-our-maximum"],
)
def test_a_pdu_longer_than_we_accept_is_refused_from_its_header(
    start_node: StartNode,
    sockets: list[socket.socket],
    caplog: pytest.LogCaptureFixture,
    associate_first: bool,
    header: bytes,
) -> None:
    """Only the header is sent: a node that waited for the body would keep the connection open
    (until the 60 s network timeout); one that checks the length closes it at once."""
    node = start_node()
    with caplog.at_level(logging.WARNING, logger="bonect"):
        sock = connect(node.server.port, sockets)
        if associate_first:
            sock.sendall(associate_rq_pdu())
            assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
            sock.settimeout(5)
            sock.recv(65536)  # the rest of it
        sock.sendall(header)
        assert closed_by_peer(sock)
    refusals = [r.getMessage() for r in caplog.records if "declares" in r.getMessage()]
    declared = int.from_bytes(header[2:], "big")
    assert len(refusals) == 1 and f"declares {declared} bytes" in refusals[0], refusals
    assoc = associate(node.server.port, timeout=5)  # and the node still serves
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_a_p_data_tf_of_exactly_our_maximum_is_read() -> None:
    """The bound is the declared maximum itself (PS3.8 D.1), not one byte less; other PDUs are
    bounded by OTHER_PDU_LIMIT; a maximum of 0 declares no limit on P-DATA-TF."""
    reads: list[int] = []
    refused: list[tuple[int, int, int]] = []

    def recv(nr_bytes: int) -> bytearray:
        reads.append(nr_bytes)
        if nr_bytes == 6:
            return bytearray(b"\x04\x00") + bytearray(4)  # the header is parsed only for its type
        return bytearray(nr_bytes)

    def refuse(pdu_type: int, length: int, limit: int) -> None:
        refused.append((pdu_type, length, limit))

    bound = PduLengthBound(recv, 1000, refuse)
    assert len(bound.recv(6)) == 6 and len(bound.recv(1000)) == 1000  # a body of exactly 1000
    assert len(bound.recv(6)) == 6 and len(bound.recv(6)) == 6  # a body of 6 is not a header
    assert len(bound.recv(6)) == 6 and bound.recv(1001) == bytearray()
    assert refused == [(0x04, 1001, 1000)]
    assert reads == [6, 1000, 6, 6, 6]  # the refused body was never read
    assert bound.limit(0x01) == OTHER_PDU_LIMIT
    unlimited = PduLengthBound(recv, 0, refuse)
    assert len(unlimited.recv(6)) == 6 and len(unlimited.recv(OTHER_PDU_LIMIT * 2)) > 0
