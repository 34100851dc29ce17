"""The C-STORE SCU: send archived files to a destination, and say what became of each one.

:func:`send_files` sends each file's dataset as stored (pixel data is never decoded or
re-encoded) over associations that propose only the SOP classes and transfer syntaxes of the
files being sent. Each instance ends in one of three outcomes:

* ``STORED``: success, or one of the warnings 0xB000, 0xB006, 0xB007;
* ``FAILED``: the destination answered another status, or cannot take the file's SOP class or
  transfer syntax (also when it accepts none of an association's presentation contexts);
* ``UNKNOWN``: no answer (timeout, aborted or refused association, destination down). A
  pynetdicom send can time out although the destination stored the instance, so the caller
  re-sends it later; the SOP Instance UID never changes, so this never duplicates.

Skipping instances already stored is the caller's job: it passes only the pending paths.

Two transports carry the C-STOREs (``[sender] transport``): pynetdicom in this process (the
default), or DCMTK ``dcmsend``, one process per batch, whose report gives each instance's
status (:mod:`bonect.daemon.dcmsend`). Both report through the same ``on_result`` callback
with the same statuses and errors, so the send ledger does not depend on the transport; with
``dcmsend`` the answers of a batch arrive together when its process ends.
"""

from __future__ import annotations

import enum
import logging
import math
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, build_context, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bonect.config import Destination, SendTransport
from bonect.daemon import dcmsend
from bonect.dicom.network import WireResponses, set_nodelay
from bonect.errors import BonectError

logger = logging.getLogger(__name__)

STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
_MAX_CONTEXTS = 128  # per association, PS3.8
_NO_CONTEXT = "destination does not accept this SOP class / syntax"
_NO_RESPONSE = "no response (timeout or association aborted)"
_DCMSEND_FILES_PER_RUN = 1000  # bounds the command line, and what a crash mid-run re-sends


class UnsendableFileError(BonectError):
    """A file to send is not a readable DICOM Part 10 file with SOP class, instance and TS."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class SendOutcome(enum.StrEnum):
    """What became of one instance."""

    STORED = "stored"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DestinationNode:
    """A peer that receives C-STOREs."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def from_config(cls, destination: Destination) -> DestinationNode:
        """The node of a ``[[destinations]]`` entry."""
        return cls(destination.ae_title, destination.host, destination.port)


@dataclass(frozen=True, slots=True)
class SendTimeouts:
    """Seconds to wait: TCP connect, association negotiation, each C-STORE answer, idle."""

    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 30.0
    network: float = 60.0


@dataclass(frozen=True, slots=True)
class InstanceResult:
    """One instance's outcome; ``status`` is ``None`` when the destination did not answer."""

    sop_instance_uid: str
    path: Path
    outcome: SendOutcome
    status: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class SendReport:
    """The outcome of every file of one :func:`send_files` call, in the order given."""

    results: tuple[InstanceResult, ...]

    def _uids(self, outcome: SendOutcome) -> tuple[str, ...]:
        return tuple(r.sop_instance_uid for r in self.results if r.outcome is outcome)

    @property
    def stored(self) -> tuple[str, ...]:
        """SOP Instance UIDs the destination stored (success or a storage warning)."""
        return self._uids(SendOutcome.STORED)

    @property
    def failed(self) -> tuple[str, ...]:
        """SOP Instance UIDs the destination refused."""
        return self._uids(SendOutcome.FAILED)

    @property
    def unknown(self) -> tuple[str, ...]:
        """SOP Instance UIDs with no answer: send them again."""
        return self._uids(SendOutcome.UNKNOWN)

    @property
    def all_stored(self) -> bool:
        """Whether every instance was stored."""
        return all(r.outcome is SendOutcome.STORED for r in self.results)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with a cap: ``initial * factor ** (attempt - 1)``, at most ``cap``."""

    initial_seconds: float = 10.0
    factor: float = 2.0
    cap_seconds: float = 1800.0

    def __post_init__(self) -> None:
        if not (0 < self.initial_seconds <= self.cap_seconds and self.factor >= 1):
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, attempt: int) -> timedelta:
        """The wait after failed attempt number ``attempt`` (1 for the first failure)."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        if self.factor == 1:
            return timedelta(seconds=self.initial_seconds)
        ratio = self.cap_seconds / self.initial_seconds
        if attempt - 1 >= math.log(ratio, self.factor):
            return timedelta(seconds=self.cap_seconds)
        seconds = self.initial_seconds * self.factor ** (attempt - 1)
        return timedelta(seconds=min(seconds, self.cap_seconds))


OnResult = Callable[[str, int | None, str | None], None]


@dataclass(frozen=True, slots=True)
class _File:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _read_header(path: Path) -> _File:
    try:
        meta = read_file_meta_info(path)
        return _File(
            path=path,
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
            transfer_syntax_uid=str(meta.TransferSyntaxUID),
        )
    except Exception as exc:
        raise UnsendableFileError(f"{path}: not a DICOM Part 10 file ({exc})", path=path) from exc


def _batches(files: Sequence[_File]) -> Iterator[list[_File]]:
    """Group files so that one association needs at most 128 presentation contexts."""
    batch: list[_File] = []
    pairs: set[tuple[str, str]] = set()
    for f in files:
        pair = (f.sop_class_uid, f.transfer_syntax_uid)
        if pair not in pairs and len(pairs) == _MAX_CONTEXTS:
            yield batch
            batch, pairs = [], set()
        pairs.add(pair)
        batch.append(f)
    if batch:
        yield batch


def _make_ae(calling_ae: str, timeouts: SendTimeouts) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    return ae


def _associate(
    ae: AE,
    destination: DestinationNode,
    pairs: Sequence[tuple[str, str]],
    ssl_context: ssl.SSLContext | None,
    wire: WireResponses,
) -> Association:
    # one context per (SOP class, transfer syntax): the acceptor picks a single syntax per context
    contexts = [build_context(sop_class, [ts]) for sop_class, ts in pairs]
    return ae.associate(
        destination.host,
        destination.port,
        contexts=contexts,
        ae_title=destination.ae_title,
        tls_args=None if ssl_context is None else (ssl_context, destination.host),
        evt_handlers=[
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_DIMSE_RECV, wire.on_dimse_recv),
        ],
    )


def _pairs(files: Iterable[_File]) -> list[tuple[str, str]]:
    return sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in files})


class _Lookahead:
    """The files to send, taken one at a time; :meth:`more` waits until it is known whether
    another one comes (a streamed source blocks until its writer has written it)."""

    def __init__(self, files: Iterable[_File]) -> None:
        self._files = iter(files)
        self._next: _File | None = None
        self._ended = False

    def more(self) -> bool:
        if self._next is None and not self._ended:
            self._next = next(self._files, None)
            self._ended = self._next is None
        return self._next is not None

    def take(self) -> _File:
        if not self.more() or self._next is None:
            raise IndexError("no file left to send")
        f, self._next = self._next, None
        return f

    def rest(self) -> Iterator[_File]:
        while self.more():
            yield self.take()


def _store_one(
    assoc: Association, f: _File, msg_id: int, wire: WireResponses
) -> tuple[SendOutcome, int | None, str | None]:
    accepted = any(
        cx.abstract_syntax == f.sop_class_uid and f.transfer_syntax_uid in cx.transfer_syntax
        for cx in assoc.accepted_contexts
    )
    if not accepted:
        return SendOutcome.FAILED, None, _NO_CONTEXT
    try:
        # the file's encoded bytes go out as stored, read in chunks (see send_files)
        status = assoc.send_c_store(f.path, msg_id=msg_id)
    except Exception as exc:  # one unreadable file must not stop the others
        if assoc.is_established:
            return SendOutcome.FAILED, None, f"could not send: {exc!r}"
        return SendOutcome.UNKNOWN, None, f"association lost: {exc!r}"
    code = status.get("Status")
    if code is None and (code := wire.status(msg_id)) is not None:
        logger.warning(
            "%s: response lost by pynetdicom, status read off the wire", f.sop_instance_uid
        )
    if code is None:  # DIMSE timeout or abort: pynetdicom aborted the association
        return SendOutcome.UNKNOWN, None, _NO_RESPONSE
    code = int(code)
    if code in STORED_STATUSES:
        return SendOutcome.STORED, code, None
    return SendOutcome.FAILED, code, f"status 0x{code:04X}"


def send_files(
    paths: Sequence[Path],
    destination: DestinationNode,
    *,
    calling_ae: str,
    timeouts: SendTimeouts | None = None,
    on_result: OnResult | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_reassociations: int = 2,
    transport: SendTransport = "pynetdicom",
) -> SendReport:
    """C-STORE ``paths`` to ``destination`` and report each instance's outcome.

    Parameters
    ----------
    paths
        DICOM Part 10 files (e.g. archived sCT instances); only those still pending.
    destination
        The receiving node.
    calling_ae
        Our AE title.
    timeouts
        Connect / negotiation / response timeouts.
    on_result
        Called once per instance as ``on_result(sop_instance_uid, status, error)``;
        ``status`` is ``None`` when there was no answer (then ``error`` says why).
    ssl_context
        A client TLS context for DICOM TLS destinations (pynetdicom transport only).
    max_reassociations
        When an association is lost mid-way (e.g. a response timeout), open a new one this many
        times at most to send the remaining files; what is left after that is ``UNKNOWN``.
    transport
        ``"pynetdicom"`` (in this process) or ``"dcmsend"`` (DCMTK ``dcmsend`` processes).

    Raises
    ------
    UnsendableFileError
        A file is not readable DICOM (checked for all files before anything is sent).
    ValueError
        ``transport="dcmsend"`` with ``ssl_context``: DCMTK 3.6.7's ``dcmsend`` has no TLS.
    """
    if transport == "dcmsend" and ssl_context is not None:
        raise ValueError("the dcmsend transport cannot send over TLS (dcmsend has no TLS)")
    files = [_read_header(Path(p)) for p in paths]
    timeouts = timeouts or SendTimeouts()
    results, finish = _collector(on_result)
    if transport == "dcmsend":
        _send_dcmsend(files, destination, calling_ae, timeouts, finish, max_reassociations)
    else:
        _send_pynetdicom(
            files, destination, calling_ae, timeouts, finish, ssl_context, max_reassociations
        )
    _log_summary(results, destination)
    return SendReport(tuple(results))


def send_stream(
    paths: Iterable[Path],
    destination: DestinationNode,
    *,
    contexts: Sequence[tuple[str, str]],
    calling_ae: str,
    timeouts: SendTimeouts | None = None,
    on_result: OnResult | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_reassociations: int = 2,
) -> SendReport:
    """:func:`send_files` for files that are still being written: each path is sent as soon as
    ``paths`` yields it (pynetdicom transport).

    The association is opened when the first path comes and proposes ``contexts``, the
    (SOP class UID, transfer syntax UID) pairs the files will have; a file of another pair is
    reported ``FAILED`` as one the destination does not accept. A path that is not a readable
    DICOM file raises :class:`UnsendableFileError`, after the files before it were reported.
    """
    results, finish = _collector(on_result)
    try:
        _send_over_associations(
            _make_ae(calling_ae, timeouts or SendTimeouts()),
            _Lookahead(_read_header(Path(p)) for p in paths),
            sorted(set(contexts)),
            destination,
            finish,
            ssl_context,
            max_reassociations,
        )
    finally:
        _log_summary(results, destination)
    return SendReport(tuple(results))


def send_batches(
    batches: Iterable[Sequence[Path]],
    destination: DestinationNode,
    *,
    calling_ae: str,
    timeouts: SendTimeouts | None = None,
    on_result: OnResult | None = None,
    max_reassociations: int = 2,
) -> SendReport:
    """:func:`send_files` with ``transport="dcmsend"`` for files that are still being written:
    a ``dcmsend`` process per batch, as ``batches`` yields them.

    The batches are what the writer has ready each time the previous process ends, so the
    sending runs beside the writing in another process. Once ``dcmsend`` could not send at all
    (no association), the later batches are reported ``UNKNOWN`` with the same reason, without
    trying again; ``max_reassociations`` counts the re-runs of all batches together.
    """
    timeouts = timeouts or SendTimeouts()
    results, finish = _collector(on_result)
    failure: str | None = None
    left = max_reassociations
    try:
        for batch in batches:
            files = [_read_header(Path(p)) for p in batch]
            if failure is not None:
                for f in files:
                    finish(f, SendOutcome.UNKNOWN, None, failure)
                continue
            failure, left = _send_dcmsend(files, destination, calling_ae, timeouts, finish, left)
    finally:
        _log_summary(results, destination)
    return SendReport(tuple(results))


_Finish = Callable[[_File, SendOutcome, int | None, str | None], None]


def _collector(on_result: OnResult | None) -> tuple[list[InstanceResult], _Finish]:
    """A list of results, and the function that adds one and tells ``on_result``."""
    results: list[InstanceResult] = []

    def finish(f: _File, outcome: SendOutcome, status: int | None, error: str | None) -> None:
        results.append(InstanceResult(f.sop_instance_uid, f.path, outcome, status, error))
        if on_result is not None:
            on_result(f.sop_instance_uid, status, error)

    return results, finish


def _send_pynetdicom(
    files: Sequence[_File],
    destination: DestinationNode,
    calling_ae: str,
    timeouts: SendTimeouts,
    finish: _Finish,
    ssl_context: ssl.SSLContext | None,
    max_reassociations: int,
) -> None:
    ae = _make_ae(calling_ae, timeouts)
    left = max_reassociations
    for batch in _batches(files):
        left = _send_over_associations(
            ae, _Lookahead(batch), _pairs(batch), destination, finish, ssl_context, left
        )


def _send_over_associations(
    ae: AE,
    files: _Lookahead,
    pairs: Sequence[tuple[str, str]],
    destination: DestinationNode,
    finish: _Finish,
    ssl_context: ssl.SSLContext | None,
    reassociations_left: int,
) -> int:
    """Send ``files`` over associations proposing ``pairs``, opening a new one when one is
    lost, ``reassociations_left`` times at most; returns how many are left."""
    # Send each file's bytes as stored, never decoded and re-encoded: with this pynetdicom
    # option a path given to send_c_store is streamed (and only to a context whose transfer
    # syntax is the file's, which is the only one _associate proposes for it). A
    # process-wide pynetdicom setting; it changes nothing for datasets sent as Datasets.
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    while files.more():
        wire = WireResponses()
        assoc = _associate(ae, destination, pairs, ssl_context, wire)
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                # it answered, and takes none of these SOP classes / syntaxes: a refusal
                logger.warning("%s at %s:%d takes none of the files", *_where(destination))
                for f in files.rest():
                    finish(f, SendOutcome.FAILED, None, _NO_CONTEXT)
                break
            why = "association rejected" if assoc.is_rejected else "association failed"
            logger.warning("%s by %s at %s:%d", why, *_where(destination))
            for f in files.rest():
                finish(f, SendOutcome.UNKNOWN, None, why)
            break
        try:
            msg_id = 0
            while assoc.is_established and files.more():
                f = files.take()
                msg_id += 1
                finish(f, *_store_one(assoc, f, msg_id, wire))
        finally:
            if assoc.is_established:
                assoc.release()
        if files.more():
            if reassociations_left <= 0:
                for f in files.rest():
                    finish(f, SendOutcome.UNKNOWN, None, "association lost, not re-opened")
                break
            reassociations_left -= 1
            logger.warning("association to %s lost; opening a new one", destination.ae_title)
    return reassociations_left


def _send_dcmsend(
    files: Sequence[_File],
    destination: DestinationNode,
    calling_ae: str,
    timeouts: SendTimeouts,
    finish: _Finish,
    max_reassociations: int,
) -> tuple[str | None, int]:
    """One ``dcmsend`` process per batch; the instances it could not send go again in a new
    process (a new association), at most ``max_reassociations`` times in all.

    Returns why ``dcmsend`` could not send at all (e.g. no association), if so, and how many
    new processes are left of ``max_reassociations``.
    """
    request = dcmsend.DcmsendRequest(
        host=destination.host,
        port=destination.port,
        called_ae=destination.ae_title,
        calling_ae=calling_ae,
        connect_timeout=timeouts.connect,
        acse_timeout=timeouts.acse,
        dimse_timeout=timeouts.dimse,
        network_timeout=timeouts.network,
    )
    reassociations = 0
    for context_batch in _batches(files):
        for start in range(0, len(context_batch), _DCMSEND_FILES_PER_RUN):
            pending = context_batch[start : start + _DCMSEND_FILES_PER_RUN]
            while pending:
                run = dcmsend.run_dcmsend(request, [f.path for f in pending])
                if run.failure is not None:
                    logger.warning("%s: %s at %s:%d", run.failure, *_where(destination))
                    for f in pending:
                        finish(f, SendOutcome.UNKNOWN, None, run.failure)
                    return run.failure, max_reassociations - reassociations
                pending = _finish_dcmsend_run(pending, run, finish)
                if pending:
                    if reassociations >= max_reassociations:
                        for f in pending:
                            finish(f, SendOutcome.UNKNOWN, None, _NO_RESPONSE)
                        break
                    reassociations += 1
                    logger.warning(
                        "%d instance(s) to %s unanswered; running dcmsend again",
                        len(pending),
                        destination.ae_title,
                    )
    return None, max_reassociations - reassociations


def _finish_dcmsend_run(
    files: Sequence[_File], run: dcmsend.DcmsendRun, finish: _Finish
) -> list[_File]:
    """Report each file's outcome from ``run``'s report; return those to send again."""
    by_name: dict[str, dcmsend.ReportEntry] = {}
    for each in run.entries:
        by_name.setdefault(each.filename, each)
    again: list[_File] = []
    for f in files:
        entry = by_name.get(str(f.path))
        if entry is None or entry.sop_instance_uid != f.sop_instance_uid:
            # dcmsend skipped it (e.g. it could not read it): no answer, and none to expect
            finish(f, SendOutcome.UNKNOWN, None, "not in dcmsend's report")
        elif entry.status is None:
            if entry.no_context or run.context_accepted(entry) is False:
                finish(f, SendOutcome.FAILED, None, _NO_CONTEXT)
            elif entry.filename in run.unanswered:
                # sent, and no response (timeout or abort): as with pynetdicom, not sent again
                # in this call (it may have been stored); the job's retry sends it again
                finish(f, SendOutcome.UNKNOWN, None, _NO_RESPONSE)
            else:
                again.append(f)  # not sent (the association ended first): on a new one
        else:
            code = entry.status
            if code in STORED_STATUSES:
                finish(f, SendOutcome.STORED, code, None)
            else:
                finish(f, SendOutcome.FAILED, code, f"status 0x{code:04X}")
        if (
            entry is not None
            and entry.status is not None
            and entry.network_transfer_syntax not in (None, f.transfer_syntax_uid)
        ):
            logger.warning(
                "%s: dcmsend sent it as %s, not as stored (%s)",
                f.sop_instance_uid,
                entry.network_transfer_syntax,
                f.transfer_syntax_uid,
            )
    return again


def _where(destination: DestinationNode) -> tuple[str, str, int]:
    return destination.ae_title, destination.host, destination.port


def _log_summary(results: Sequence[InstanceResult], destination: DestinationNode) -> None:
    counts = {o: sum(r.outcome is o for r in results) for o in SendOutcome}
    logger.info(
        "sent %d instances to %s: %d stored, %d failed, %d unknown",
        len(results),
        destination.ae_title,
        counts[SendOutcome.STORED],
        counts[SendOutcome.FAILED],
        counts[SendOutcome.UNKNOWN],
    )


def echo(
    destination: DestinationNode,
    calling_ae: str,
    *,
    timeouts: SendTimeouts | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> bool:
    """C-ECHO ``destination``; ``True`` when it answered success."""
    ae = _make_ae(calling_ae, timeouts or SendTimeouts())
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=None if ssl_context is None else (ssl_context, destination.host),
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)],
    )
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    return bool(status.get("Status") == 0x0000)
