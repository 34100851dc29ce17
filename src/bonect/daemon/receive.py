"""The one receive path: an arriving instance is checked, archived and recorded, or refused.

The Storage SCP (every C-STORE) and the drop folder (every complete file) both call
:meth:`Receiver.receive`, which does, in this order:

1. the disk reserve: under ``reserve_bytes`` free (or free space unreadable), refuse;
2. the size: an instance over ``max_dataset_bytes`` (``[storage] max_dataset_mb``) is refused;
3. one header parse (:func:`bonect.dicom.header.read_header`), with the UIDs validated;
4. for a C-STORE, the header's SOP Instance and SOP Class UIDs against the request's;
5. the archive write of the bytes exactly as received (:meth:`Archive.write`), or of the file
   that holds them (:meth:`Archive.adopt`: a data set streamed to disk by the SCP);
6. the catalog record (:meth:`InstanceSink.record`).

It never raises; it returns a :class:`Receipt` whose ``status`` is the DICOM C-STORE status
(PS3.4 Annex B; the drop folder maps it to its own outcome):

======  ====================================================================================
0x0000  success: archived and recorded
0xA700  out of resources: the reserve is hit, free space cannot be read, the instance is over
        the size limit, the archive write or the catalog record failed, or anything
        unexpected; the sender may try again later (the drop folder keeps the file for its
        next scan)
0xA900  data set does not match SOP class: the header's SOP Class UID is not the request's
0xC210  cannot understand: the dataset cannot be decoded, or its header cannot identify the
        instance (:class:`HeaderError`: a UID missing or invalid, ``../`` included), or its
        SOP Instance UID is not the request's (the drop folder moves the file to ``rejected/``)
======  ====================================================================================

(pynetdicom itself answers 0xC211 when a handler raises; ours do not.) An association is
reported ended to the sink (:meth:`Receiver.association_ended`) only when it archived anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from bonect.daemon.archive import Archive
from bonect.dicom.header import HeaderError, InstanceHeader, read_header
from bonect.dicom.uids import InvalidUIDError

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210

DEFAULT_MAX_DATASET_BYTES = 2048 * 1024 * 1024
"""``[storage] max_dataset_mb``'s default, in bytes."""


class InstanceSink(Protocol):
    """Where received instances are recorded (the catalog, wired by the daemon)."""

    def record(
        self,
        header: InstanceHeader,
        path: Path,
        *,
        received_at: datetime,
        association_id: str,
        calling_ae: str | None,
    ) -> None:
        """Record one archived instance; raise if it could not be recorded durably."""

    def association_ended(self, association_id: str, at: datetime, *, aborted: bool) -> None:
        """An association (or a dropped file) that archived at least one instance ended:
        released, or ``aborted`` (an A-ABORT, or the connection lost) and maybe cut short."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of one instance: its DICOM status, and why when it is not success."""

    status: int
    reason: str = ""
    header: InstanceHeader | None = None  # once read
    path: Path | None = None  # once archived

    @property
    def ok(self) -> bool:
        """Archived and recorded."""
        return self.status == SUCCESS


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _uid(value: object) -> str:
    return str(value).rstrip("\x00 ")


class Receiver:
    """The receive path shared by the SCP and the drop folder; holds no global state."""

    def __init__(
        self,
        *,
        archive: Archive,
        sink: InstanceSink,
        reserve_bytes: int = 0,
        free_bytes: Callable[[], int] | None = None,
        max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """Receive into ``archive`` and record with ``sink``.

        Parameters
        ----------
        reserve_bytes, free_bytes
            Under ``reserve_bytes`` free (``free_bytes()``, default the archive's disk),
            instances are refused with 0xA700.
        max_dataset_bytes
            An instance larger than this (as received) is refused with 0xA700.
        clock
            Gives ``received_at`` (an aware datetime) and the end time of associations.
        """
        self.archive = archive
        self.sink = sink
        self.reserve_bytes = reserve_bytes
        self.free_bytes = free_bytes or archive.free_bytes
        self.max_dataset_bytes = max_dataset_bytes
        self.clock = clock
        self._archived: set[str] = set()  # association ids that archived an instance
        self._lock = threading.Lock()

    def disk_low(self) -> bool:
        """Whether free disk is under the reserve (also when it cannot be read: fail closed)."""
        try:
            return self.free_bytes() < self.reserve_bytes
        except Exception:
            logger.exception("cannot read free disk space")
            return True

    def receive(
        self,
        dataset: Callable[[], Dataset],
        encoded: Callable[[], bytes | Path],
        *,
        association_id: str,
        size: int | None = None,
        transfer_syntax_uid: str | None = None,
        calling_ae: str | None = None,
        peer_address: str = "",
        request_sop_instance_uid: str | None = None,
        request_sop_class_uid: str | None = None,
    ) -> Receipt:
        """Store one instance; the :class:`Receipt` says how it went. Never raises.

        Parameters
        ----------
        dataset
            Decodes the instance's dataset (header only is enough; called once).
        encoded
            Gives the bytes to archive, exactly as received, or a file holding them that the
            archive may take by a rename (called once, after the checks).
        association_id
            Groups instances for settle (a C-STORE association, or ``"import:<name>"``).
        size
            The instance's size as received, checked against ``max_dataset_bytes``; ``None``
            to skip the check.
        transfer_syntax_uid
            The transfer syntax of ``encoded``; ``None``: the dataset's file meta says.
        calling_ae, peer_address
            Who sent it over DICOM (``None`` and ``""`` for the drop folder).
        request_sop_instance_uid, request_sop_class_uid
            The C-STORE request's Affected SOP Instance and Class UIDs, checked against the
            header's; ``None`` to skip the check.
        """
        try:
            return self._receive(
                dataset,
                encoded,
                association_id=association_id,
                size=size,
                transfer_syntax_uid=transfer_syntax_uid,
                calling_ae=calling_ae,
                request_sop_instance_uid=request_sop_instance_uid,
                request_sop_class_uid=request_sop_class_uid,
            )
        except Exception as exc:  # the boundary: a status, never an exception
            logger.exception("unexpected failure receiving from %r (%s)", calling_ae, peer_address)
            return Receipt(OUT_OF_RESOURCES, f"unexpected failure: {exc!r}")

    def _receive(
        self,
        dataset: Callable[[], Dataset],
        encoded: Callable[[], bytes | Path],
        *,
        association_id: str,
        size: int | None,
        transfer_syntax_uid: str | None,
        calling_ae: str | None,
        request_sop_instance_uid: str | None,
        request_sop_class_uid: str | None,
    ) -> Receipt:
        received_at = self.clock()
        if self.disk_low():
            return Receipt(OUT_OF_RESOURCES, "free disk under the reserve")
        if size is not None and size > self.max_dataset_bytes:
            return Receipt(
                OUT_OF_RESOURCES,
                f"{size / 2**20:.1f} MB, over the limit of {self.max_dataset_bytes / 2**20:g} MB"
                " (storage.max_dataset_mb)",
            )
        try:
            header = read_header(dataset(), transfer_syntax_uid=transfer_syntax_uid)
        except HeaderError as exc:
            return Receipt(CANNOT_UNDERSTAND, str(exc))
        except OSError as exc:
            if exc.errno is not None:  # the disk, not the data set: the sender may try again
                return Receipt(OUT_OF_RESOURCES, f"the data set could not be read: {exc}")
            return Receipt(CANNOT_UNDERSTAND, f"undecodable dataset: {exc!r}")  # pydicom's own
        except Exception as exc:  # not DICOM, truncated, undecodable
            return Receipt(CANNOT_UNDERSTAND, f"undecodable dataset: {exc!r}")
        uid = header.sop_instance_uid
        if request_sop_instance_uid is not None and uid != _uid(request_sop_instance_uid):
            return Receipt(CANNOT_UNDERSTAND, f"{uid}: SOP Instance UID is not the request's")
        if request_sop_class_uid is not None and header.sop_class_uid != _uid(
            request_sop_class_uid
        ):
            return Receipt(DATASET_MISMATCH, f"{uid}: SOP Class UID is not the request's", header)
        try:
            payload = encoded()
            if isinstance(payload, Path):
                path = self.archive.adopt(header, payload)
            else:
                path = self.archive.write(header, payload)
        except InvalidUIDError as exc:  # read_header validated them: defence in depth
            return Receipt(CANNOT_UNDERSTAND, str(exc), header)
        except Exception as exc:
            logger.exception("could not archive %s", uid)
            return Receipt(OUT_OF_RESOURCES, f"could not archive: {exc!r}", header)
        with self._lock:
            self._archived.add(association_id)
        try:
            self.sink.record(
                header,
                path,
                received_at=received_at,
                association_id=association_id,
                calling_ae=calling_ae,
            )
        except Exception as exc:  # the catalog is unavailable: the sender will try again
            logger.exception("could not record %s", uid)
            return Receipt(OUT_OF_RESOURCES, f"could not record: {exc!r}", header, path)
        return Receipt(SUCCESS, "", header, path)

    def association_ended(self, association_id: str, *, aborted: bool = False) -> None:
        """Tell the sink that ``association_id`` ended (released, or ``aborted``), if it archived
        anything. Never raises."""
        with self._lock:
            if association_id not in self._archived:
                return
            self._archived.discard(association_id)
        try:
            self.sink.association_ended(association_id, self.clock(), aborted=aborted)
        except Exception:
            logger.exception("could not record the end of association %s", association_id)
