"""The Storage SCP: who may associate, and the C-STORE handler over the one receive path.

:meth:`StorageServer.start` runs a pynetdicom acceptor in its own threads (port 0 allowed) for
C-ECHO and C-STORE of every storage SOP class, in the transfer syntaxes of
:data:`ACCEPTED_TRANSFER_SYNTAXES`. A C-STORE is handed to
:meth:`~bonect.daemon.receive.Receiver.receive` (reserve check, header, archive, catalog) and
answered with the status it returns (the codes are listed in :mod:`bonect.daemon.receive`);
the handler never raises. Data sets are streamed to a temporary file as they arrive (never
held whole in memory, :mod:`bonect.daemon.incoming`): one over the receiver's
``max_dataset_bytes`` is answered 0xA700 and deleted, and an association whose data set grows
past twice that is aborted there, so it cannot fill the disk either. The maximum PDU length we
declare (:data:`MAXIMUM_PDU_SIZE`) bounds what is read into memory at once: a PDU whose length
field says more is refused unread (:class:`~bonect.daemon.connection_guard.PduLengthBound`).

Connections go through :mod:`bonect.daemon.connection_guard` first (the address allow-list
at accept, the TLS handshake off the accept thread, the pending and association limits of
:class:`~bonect.daemon.connection_guard.ConnectionLimits`). Association requests are then
checked against the :class:`AccessPolicy` before negotiation and refused with an
A-ASSOCIATE-RJ that says why.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydicom import uid as dicom_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from bonect.audit import AuditEvent, AuditTrail, Participant
from bonect.daemon.connection_guard import (
    AssociationSlots,
    BoundedPduRequestHandler,
    ConnectionLimits,
    GuardedAssociationServer,
    RefusalLog,
)
from bonect.daemon.incoming import DatasetGuard, received_payload, stream_received_datasets
from bonect.daemon.receive import OUT_OF_RESOURCES, SUCCESS, Receiver
from bonect.dicom.network import set_nodelay
from bonect.errors import ConfigError

logger = logging.getLogger(__name__)

#: Uncompressed, deflated, RLE, JPEG (lossless and lossy), JPEG-LS and JPEG 2000.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.DeflatedExplicitVRLittleEndian,
    dicom_uid.ExplicitVRBigEndian,
    dicom_uid.RLELossless,
    dicom_uid.JPEGLosslessSV1,  # 1.2.840.10008.1.2.4.70
    dicom_uid.JPEGLossless,  # 1.2.840.10008.1.2.4.57
    dicom_uid.JPEGLSLossless,
    dicom_uid.JPEGLSNearLossless,
    dicom_uid.JPEG2000Lossless,
    dicom_uid.JPEG2000,
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
_REJECT_ADDRESS = (0x01, 0x01, 0x01)  # permanent, service user, no reason given
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
_REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user, called AE not recognised
_REJECT_DISK = (0x02, 0x03, 0x02)  # transient, service provider, local limit exceeded
_REJECT_BUSY = (0x02, 0x03, 0x02)  # the same: every association slot is held
_REJECT_TRANSIENT = (0x02, 0x01, 0x01)  # transient, service user, no reason given
NOT_AUTHORIZED = 0x0124  # "Refused: Not authorized", a general status of PS3.7 Annex C

MAXIMUM_PDU_SIZE = 1024 * 1024
"""The largest PDU we accept. pynetdicom reads each PDU whole into memory, so this (not the data
set) bounds memory per association; DCMTK and Orthanc send at most 128 kB PDUs anyway."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may associate, and from where a C-STORE answering our own C-MOVE may come.

    ``None`` allows anyone; an empty collection allows no one."""

    calling_ae_titles: frozenset[str] | None = None
    networks: tuple[IPNetwork, ...] | None = None
    move_sources: tuple[IPNetwork, ...] | None = None  # the [[sources]] hosts' addresses

    @classmethod
    def build(
        cls,
        *,
        calling_ae_titles: Iterable[str] | None,
        networks: Iterable[str] | None,
        move_sources: Iterable[str] | None = None,
    ) -> AccessPolicy:
        """Build a policy from config strings (``"10.1.2.0/24"``, ``"192.168.1.7"``, ``"::1"``).

        Raises
        ------
        ConfigError
            An address or network cannot be parsed.
        """
        titles = (
            None if calling_ae_titles is None else frozenset(t.strip() for t in calling_ae_titles)
        )
        return cls(titles, _parse_networks(networks), _parse_networks(move_sources))

    def allows_address(self, address: str) -> bool:
        """Whether a peer at ``address`` (IPv4, IPv6 or IPv4-mapped IPv6) may associate."""
        return self.networks is None or _in_networks(address, self.networks)

    def allows_move_answer(self, address: str) -> bool:
        """Whether a C-STORE naming us as its move originator may come from ``address``."""
        return self.move_sources is None or _in_networks(address, self.move_sources)

    def allows_calling_ae(self, ae_title: str) -> bool:
        """Whether a peer calling itself ``ae_title`` may associate."""
        return self.calling_ae_titles is None or ae_title.strip() in self.calling_ae_titles


def _parse_networks(texts: Iterable[str] | None) -> tuple[IPNetwork, ...] | None:
    if texts is None:
        return None
    items = []
    for text in texts:
        try:
            items.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"not an address or network: {text!r}") from exc
    return tuple(items)


def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(c in net for c in candidates for net in networks if c.version == net.version)


def server_tls_context(
    cert_file: Path, key_file: Path, ca_file: Path | None = None
) -> ssl.SSLContext:
    """A DICOM TLS server context (TLS 1.2+); with ``ca_file``, clients must present a
    certificate signed by it (mutual TLS, as the DICOM secure transport profiles do)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    context.verify_mode = ssl.CERT_REQUIRED if ca_file is not None else ssl.CERT_NONE
    return context


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Handlers:
    """The event handlers of one server; holds the association ids, nothing global."""

    def __init__(
        self,
        *,
        ae_title: str,
        receiver: Receiver,
        policy: AccessPolicy,
        slots: AssociationSlots,
        refusals: RefusalLog,
        audit: AuditTrail | None = None,
    ) -> None:
        self.audit = audit
        self.ae_title = ae_title
        self.receiver = receiver
        self.policy = policy
        self.slots = slots
        self.refusals = refusals
        self._ids: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _association_id(self, assoc: Association) -> str:
        with self._lock:
            if (existing := self._ids.get(assoc)) is None:
                existing = self._ids[assoc] = uuid.uuid4().hex
            return existing

    def on_requested(self, event: Event) -> None:
        """Refuse, before negotiation, a peer the policy does not allow or a full disk."""
        assoc = event.assoc
        calling = address = "?"
        try:
            request = assoc.requestor.primitive
            if request is None:
                raise ValueError("no A-ASSOCIATE-RQ")
            calling = str(request.calling_ae_title).strip()
            called = str(request.called_ae_title).strip()
            address = assoc.requestor.address
            reason, why = self._refusal(calling, called, address)
            if reason is None and not self.slots.try_take(assoc):
                reason, why = _REJECT_BUSY, "every association slot is held (node.max_associations)"
        except Exception as exc:  # fail closed: pynetdicom would accept if this raised
            logger.exception("cannot check an association request")
            reason, why = _REJECT_TRANSIENT, f"check failed ({exc!r})"
        if reason is None:
            if self.audit is not None:
                self.audit.record(
                    AuditEvent.ASSOCIATION_ACCEPTED,
                    participants=[
                        Participant(calling, requestor=True, address=address),
                        Participant(self.ae_title, requestor=False),
                    ],
                )
            return
        self.refusals.refused(address, why, f"association of {calling!r}")
        assoc.acse.send_reject(*reason)
        assoc.kill()  # as pynetdicom's own rejections: wait for the peer to close

    def _refusal(
        self, calling: str, called: str, address: str
    ) -> tuple[tuple[int, int, int] | None, str]:
        if not self.policy.allows_address(address):
            return _REJECT_ADDRESS, "source address not allowed"
        if called != self.ae_title:
            return _REJECT_CALLED_AE, f"called AE {called!r} is not ours"
        if not self.policy.allows_calling_ae(calling):
            return _REJECT_CALLING_AE, "calling AE not allowed"
        if self.receiver.disk_low():
            return _REJECT_DISK, "free disk under the reserve"
        return None, ""

    def on_echo(self, event: Event) -> int:
        """C-ECHO: always success once associated."""
        return SUCCESS

    def on_store(self, event: Event) -> int:
        """C-STORE: the one receive path (archive the bytes as received, record), its status."""
        calling = "?"
        try:
            requestor = event.assoc.requestor
            calling = requestor.ae_title
            request = cast(C_STORE, event.request)
            originator = str(request.MoveOriginatorApplicationEntityTitle or "").strip()
            if originator == self.ae_title and not self.policy.allows_move_answer(
                requestor.address
            ):
                self.refusals.refused(
                    requestor.address,
                    "it answers our C-MOVE but is no [[sources]] host",
                    f"C-STORE of {calling!r}",
                )
                return NOT_AUTHORIZED
            payload = received_payload(event)  # a file: pixels neither in memory nor decoded
            receipt = self.receiver.receive(
                payload.dataset,
                payload.encoded,
                association_id=self._association_id(event.assoc),
                size=payload.size,
                transfer_syntax_uid=event.context.transfer_syntax,
                calling_ae=calling,
                peer_address=requestor.address,
                request_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                request_sop_class_uid=str(request.AffectedSOPClassUID or ""),
            )
        except Exception:  # the boundary: a status for the peer, never an exception
            logger.exception("unexpected failure storing an instance from %r", calling)
            return OUT_OF_RESOURCES
        if not receipt.ok:
            logger.warning("C-STORE from %r: 0x%04X, %s", calling, receipt.status, receipt.reason)
        return receipt.status

    def on_dataset_too_large(self, assoc: Association, received: int) -> None:
        """A data set passed twice the size limit while arriving: say so before the abort."""
        self.refusals.refused(
            assoc.requestor.address,
            f"a data set passed {received / 2**20:.0f} MB, twice storage.max_dataset_mb: "
            "association aborted",
            f"C-STORE of {assoc.requestor.ae_title!r}",
        )

    def on_released(self, event: Event) -> None:
        """A-RELEASE: the peer says it is done."""
        self._ended(event.assoc, aborted=False)

    def on_aborted(self, event: Event) -> None:
        """A-ABORT, or the connection closed without a release: the series may be cut short."""
        self._ended(event.assoc, aborted=True)

    def _ended(self, assoc: Association, *, aborted: bool) -> None:
        """Free the slot and tell the receive path, once (the first of the events counts)."""
        self.slots.free(assoc)
        with self._lock:
            association_id = self._ids.pop(assoc, None)
        if association_id is not None:
            self.receiver.association_ended(association_id, aborted=aborted)


class StorageServer:
    """A running Storage SCP; get one with :meth:`start`, end it with :meth:`stop`."""

    def __init__(
        self, ae: AE, server: ThreadedAssociationServer, ae_title: str, slots: AssociationSlots
    ) -> None:
        self._ae = ae
        self._server = server
        self._ae_title = ae_title
        self._slots = slots

    @classmethod
    def start(
        cls,
        *,
        ae_title: str,
        host: str,
        port: int,
        receiver: Receiver,
        policy: AccessPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: ConnectionLimits | None = None,
        network_timeout: float = 60.0,
        maximum_pdu_size: int = MAXIMUM_PDU_SIZE,
        audit: AuditTrail | None = None,
    ) -> StorageServer:
        """Listen on ``host:port`` (0 picks a free port) and serve in background threads.

        Parameters
        ----------
        ae_title
            Our AE title; associations calling another title are rejected.
        receiver
            The receive path every C-STORE goes through. Under its disk reserve, new
            associations are refused (and C-STOREs answered 0xA700 by the receiver).
        policy
            Allowed calling AE titles and source networks; ``None`` allows any peer.
        ssl_context
            Serve DICOM TLS with it (see :func:`server_tls_context`).
        limits
            Associations at once, connections waiting, and the request timeout.
        network_timeout
            An association idle this long is aborted.
        audit
            Where associations accepted and refused are recorded.
        maximum_pdu_size
            The largest PDU we accept (0: no limit, and then a sender may send a whole data
            set as one PDU, read into memory at once).
        """
        limits = limits or ConnectionLimits()
        policy = policy or AccessPolicy()
        stream_received_datasets()
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        ae.maximum_associations = limits.backstop
        ae.maximum_pdu_size = maximum_pdu_size
        ae.network_timeout = network_timeout
        ae.acse_timeout = limits.request_timeout  # the ARTIM timer: A-ASSOCIATE-RQ within this
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
        slots = AssociationSlots(limits.max_associations)
        refusals = RefusalLog(audit=audit)
        handlers = _Handlers(
            ae_title=ae_title,
            receiver=receiver,
            policy=policy,
            slots=slots,
            refusals=refusals,
            audit=audit,
        )
        guard = DatasetGuard(2 * receiver.max_dataset_bytes, on_abort=handlers.on_dataset_too_large)
        server = ae.make_server(
            (host, port),
            ssl_context=ssl_context,
            server_class=GuardedAssociationServer,
            request_handler=BoundedPduRequestHandler,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, set_nodelay),
                (evt.EVT_REQUESTED, handlers.on_requested),
                (evt.EVT_C_ECHO, handlers.on_echo),
                (evt.EVT_C_STORE, handlers.on_store),
                (evt.EVT_RELEASED, handlers.on_released),
                (evt.EVT_ABORTED, handlers.on_aborted),
                (evt.EVT_CONN_CLOSE, handlers.on_aborted),
                (evt.EVT_PDU_RECV, guard.on_pdu_recv),
                (evt.EVT_CONN_CLOSE, guard.on_conn_close),
            ],
        )
        if not isinstance(server, GuardedAssociationServer):
            raise RuntimeError("pynetdicom did not make the server asked for")
        server.guard(policy, limits, refusals, slots)
        threading.Thread(
            target=server.serve_forever, name=f"bonect-scp-accept-{ae_title}", daemon=True
        ).start()
        ae._servers.append(server)  # as AE.start_server does: AE.shutdown() stops it
        if handlers.policy.networks is None and not _is_loopback(host):
            logger.warning("listening on %s with no source address allow-list", host)
        logger.info(
            "storage SCP %s listening on %s:%d%s",
            ae_title,
            host,
            server.server_address[1],
            " (TLS)" if ssl_context is not None else "",
        )
        return cls(ae, server, ae_title, slots)

    @property
    def port(self) -> int:
        """The port actually listened on (useful after ``port=0``)."""
        return int(self._server.server_address[1])

    @property
    def ae_title(self) -> str:
        """Our AE title."""
        return self._ae_title

    def join_associations(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the associations in progress to end (their
        connections closed and their end handled); whether they all did."""
        deadline = time.monotonic() + timeout
        for assoc in self._ae.active_associations:
            for thread in (assoc, assoc.dul):
                thread.join(max(0.0, deadline - time.monotonic()))
        return not self._ae.active_associations

    def stop(self) -> None:
        """Abort the associations in progress and stop listening."""
        for assoc in self._ae.active_associations:
            if not self._slots.holds(assoc):  # not associated: nothing to abort (pynetdicom's
                assoc.kill()  # state machine raises on an A-ABORT before the A-ASSOCIATE-RQ)
        self._ae.shutdown()
        logger.info("storage SCP %s stopped", self._ae_title)

    def __enter__(self) -> StorageServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
