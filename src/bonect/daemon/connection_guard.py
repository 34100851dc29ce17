"""The Storage SCP's front door: who may connect, how many may wait, how many may associate.

pynetdicom 3.0.4's server does the TLS handshake in its accept thread with no timeout (one
silent connection stalls every TLS client), and counts a connection against
``maximum_associations`` from the moment it is accepted, for ~30 s after a peer that sent
garbage (ten such connections lock everyone out; see FIELD-NOTES.md).
:class:`GuardedAssociationServer` changes the order of things:

1. at accept, in the accept thread: a source address the :class:`AccessPolicy` does not allow
   is closed at once, and so is a connection beyond ``max_pending`` connections that have not
   associated yet; nothing else runs for them;
2. in the connection's own thread: the TLS handshake, with ``request_timeout``; a failure is
   logged with its reason and closed;
3. the peer must send its A-ASSOCIATE-RQ within ``request_timeout`` (pynetdicom's ARTIM timer);
4. in ``EVT_REQUESTED`` (:meth:`AssociationSlots.try_take`): at most ``max_associations``
   *associations* at once; beyond, "Rejected Transient: Local Limit Exceeded".

Throughout, every PDU's length field is checked before its body is read
(:class:`PduLengthBound`): pynetdicom would read as much as the 4-byte field says (up to 4 GiB)
into memory first. A P-DATA-TF longer than the maximum length we declared, or any other PDU over
:data:`OTHER_PDU_LIMIT`, ends the connection unread.

Every refusal is logged once per address and reason a minute (:class:`RefusalLog`), with the
count of those not logged: a scanner's burst is one line, not fifty.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from bonect.audit import MINOR_FAILURE, AuditEvent, AuditTrail, Participant

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from bonect.daemon.scp import AccessPolicy

logger = logging.getLogger(__name__)

PDU_HEADER_LENGTH = 6  # type, reserved, 4-byte length (PS3.8 9.3.1)
P_DATA_TF = 0x04
#: The longest PDU other than P-DATA-TF we read: an A-ASSOCIATE-RQ with all 128 presentation
#: contexts, each with a dozen transfer syntaxes, and a user identity is well under 256 kB.
OTHER_PDU_LIMIT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The SCP's limits (``[node]`` keys ``max_associations``, ``max_pending_connections``,
    ``request_timeout_seconds``)."""

    max_associations: int = 10  # associations at once (pynetdicom's default too)
    max_pending: int = 64  # connections that have not associated yet
    request_timeout: float = 10.0  # TLS handshake, then the A-ASSOCIATE-RQ, must arrive within

    @property
    def backstop(self) -> int:
        """pynetdicom's own ``maximum_associations``: never the limit that answers first.

        pynetdicom counts every live acceptor thread (associated or not, and for a while after
        an abort); our own counts bound those to ``max_associations + max_pending``."""
        return self.max_associations + 2 * self.max_pending


class RefusalLog:
    """Log a refusal once per (address, reason) per ``interval`` seconds, with what was skipped;
    each line logged is also an audit record (``association_refused``)."""

    def __init__(
        self,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        audit: AuditTrail | None = None,
    ):
        self._interval = interval
        self._clock = clock
        self._audit = audit
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (logged at, skipped)

    def refused(self, address: str, reason: str, what: str = "connection") -> None:
        now = self._clock()
        key = (address, reason)
        with self._lock:
            logged_at, skipped = self._seen.get(key, (-float("inf"), 0))
            if now - logged_at < self._interval:
                self._seen[key] = (logged_at, skipped + 1)
                return
            self._seen[key] = (now, 0)
            if len(self._seen) > 4096:  # many addresses: forget the oldest half
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:2048]:
                    del self._seen[old]
        more = f" ({skipped} more since the last line)" if skipped else ""
        logger.warning("refusing %s from %s: %s%s", what, address, reason, more)
        if self._audit is not None:
            self._audit.record(
                AuditEvent.ASSOCIATION_REFUSED,
                outcome=MINOR_FAILURE,
                reason=f"{what}: {reason}{more}",
                participants=[Participant(address, requestor=True, address=address)],
            )


class AssociationSlots:
    """How many associations are established now; taken in EVT_REQUESTED, freed at the end."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._held: weakref.WeakSet[Association] = weakref.WeakSet()

    def try_take(self, assoc: Association) -> bool:
        """Take a slot for ``assoc``; False when all are held."""
        with self._lock:
            live = sum(1 for held in self._held if held.is_alive())
            if live >= self._limit:
                return False
            self._held.add(assoc)
            return True

    def free(self, assoc: Association) -> None:
        with self._lock:
            self._held.discard(assoc)

    def holds(self, assoc: Association) -> bool:
        with self._lock:
            return assoc in self._held


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the front door described in the module docstring.

    Built by ``AE.make_server(..., server_class=GuardedAssociationServer)``, then given its
    policy with :meth:`guard` before it serves.
    """

    _policy: AccessPolicy
    _limits: ConnectionLimits
    _refusals: RefusalLog
    _slots: AssociationSlots
    _accepted_since_collect: bool = False

    def guard(
        self,
        policy: AccessPolicy,
        limits: ConnectionLimits,
        refusals: RefusalLog,
        slots: AssociationSlots,
    ) -> None:
        self._policy = policy
        self._limits = limits
        self._refusals = refusals
        self._slots = slots
        self._handshaking = 0
        self._count_lock = threading.Lock()

    def _pending(self) -> int:
        """Connections accepted that hold no association slot (handshaking or not yet asked)."""
        waiting = sum(
            1
            for assoc in self.active_associations
            if assoc.is_alive() and not self._slots.holds(assoc)
        )
        return waiting + self._handshaking

    def service_actions(self) -> None:
        """Called by ``serve_forever`` every half second: pynetdicom runs a full
        ``gc.collect()`` every 30 s there (dead association threads linger in cycles); it costs
        ~0.1 s in a process with PyTorch loaded, so here only when a connection came since."""
        if self._accepted_since_collect:
            super().service_actions()
            if self._gc[0] == 0:  # pynetdicom collected just now
                self._accepted_since_collect = False

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, and nothing more: the TLS handshake is done in the connection's thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        self._accepted_since_collect = True
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """In the accept thread: the address allow-list, then the pending-connection limit."""
        address = str(client_address[0])
        if not self._policy.allows_address(address):
            self._refusals.refused(address, "source address not allowed")
            return False
        with self._count_lock:
            if self._pending() >= self._limits.max_pending:
                refuse = True
            else:
                refuse = False
                self._handshaking += 1  # until the association thread exists
        if refuse:
            self._refusals.refused(
                address, f"{self._limits.max_pending} connections already waiting to associate"
            )
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread: the TLS handshake (with the timeout), then pynetdicom."""
        address = str(client_address[0])
        try:
            if self.ssl_context is not None:
                try:
                    request = self._handshake(request)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self._refusals.refused(address, f"TLS handshake failed ({exc})", "TLS")
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self._handshaking -= 1

    def refuse_pdu(self, address: str, pdu_type: int, length: int, limit: int) -> None:
        """A PDU's length field is over what we read: logged (and audited), then closed."""
        self._refusals.refused(
            address,
            f"a PDU of type 0x{pdu_type:02X} declares {length} bytes, over the {limit} we accept",
            "PDU",
        )

    def _handshake(self, raw: socket.socket) -> ssl.SSLSocket:
        assert self.ssl_context is not None
        raw.settimeout(self._limits.request_timeout)
        wrapped = self.ssl_context.wrap_socket(raw, server_side=True)
        wrapped.settimeout(None)  # as an accepted socket is: pynetdicom selects before reading
        return wrapped


class PduLengthBound:
    """One association's reads, refusing a PDU whose length field is over its bound.

    pynetdicom's DUL reads each PDU in two calls of ``AssociationSocket.recv``: its 6-byte
    header, then as many bytes as the header's length field says. This stands in for ``recv``
    and answers the second call with nothing when the length is over the bound: pynetdicom then
    sees the connection closed (Evt17) and ends the association without reading the body.

    ``max_data_length`` is the maximum PDU length we declared (PS3.8 D.1: the longest
    P-DATA-TF the peer may send us; 0 declares no limit); other PDUs are bounded by
    :data:`OTHER_PDU_LIMIT`. ``refused(pdu_type, length, limit)`` is called once when refusing.
    """

    def __init__(
        self,
        recv: Callable[[int], bytearray],
        max_data_length: int,
        refused: Callable[[int, int, int], None],
    ) -> None:
        self._recv = recv
        self._max_data_length = max_data_length
        self._refused = refused
        self._body_of: int | None = None  # the PDU type whose body the next read is

    def limit(self, pdu_type: int) -> int:
        """The longest body of this PDU type we read (0: no limit)."""
        return self._max_data_length if pdu_type == P_DATA_TF else OTHER_PDU_LIMIT

    def recv(self, nr_bytes: int) -> bytearray:
        pdu_type, self._body_of = self._body_of, None
        if pdu_type is not None:
            limit = self.limit(pdu_type)
            if limit and nr_bytes > limit:
                self._refused(pdu_type, nr_bytes, limit)
                return bytearray()
            return self._recv(nr_bytes)
        data = self._recv(nr_bytes)
        if nr_bytes == PDU_HEADER_LENGTH and len(data) == PDU_HEADER_LENGTH:
            self._body_of = data[0]
        return data


class BoundedPduRequestHandler(RequestHandler):
    """pynetdicom's handler of an accepted connection, its reads under a :class:`PduLengthBound`.

    Given to ``AE.make_server(..., request_handler=BoundedPduRequestHandler)`` together with
    ``server_class=GuardedAssociationServer``.
    """

    server: GuardedAssociationServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        if sock is None:  # pragma: no cover - pynetdicom sets it just above
            raise RuntimeError("pynetdicom made an association without its socket")
        address = str(self.client_address[0])

        def refused(pdu_type: int, length: int, limit: int) -> None:
            self.server.refuse_pdu(address, pdu_type, length, limit)

        bound = PduLengthBound(sock.recv, self.ae.maximum_pdu_size, refused)
        # pynetdicom builds the AssociationSocket itself: its reads are bounded on the instance
        sock.recv = bound.recv  # type: ignore[method-assign]
        return assoc
