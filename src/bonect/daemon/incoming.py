"""A C-STORE's data set on its way in: streamed to a file, never held whole in memory.

pynetdicom can write a C-STORE request's data set, P-DATA fragment by fragment, to a temporary
file (its process-wide switch ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET``, turned on by
:func:`stream_received_datasets`); the ``EVT_C_STORE`` handler then finds it at
``event.dataset_path``: a DICOM file (preamble, file meta from the request and the presentation
context, then the data set exactly as received). Facts about pynetdicom 3.0.4 this relies on:

* the file is a ``NamedTemporaryFile(delete=False, suffix=".dcm")`` in :func:`tempfile.gettempdir`
  (``$TMPDIR``); when that is on the archive's file system the archive takes it by a rename
  (:meth:`~bonect.daemon.archive.Archive.adopt`), else by a copy. ``bonect-daemon start``
  points it at ``<storage dir>/receiving`` (:func:`receive_into`): on the archive's disk, and not
  in a ``/tmp`` that may be memory (a tmpfs, as on Debian 13);
* pynetdicom closes and deletes it after the handler returned (a file the archive renamed away
  is simply gone by then);
* a data set cut short (A-ABORT, lost connection) is left behind, and so is one received whole
  but still queued behind a handler when the association ended: :class:`DatasetGuard` removes
  both when the connection closes;
* the whole data set is on disk before the handler runs: a peer cannot be answered a status
  earlier, only aborted. :class:`DatasetGuard` counts the data-set bytes of every incoming PDU
  and aborts an association whose data set passes ``abort_bytes``, so one association never
  puts more than that on disk.

Each PDU is still read whole into memory by pynetdicom before it is written: a peer must honour
the maximum PDU length we declare (every sender does; the A-ASSOCIATE-AC says it) for memory to
stay bounded by a few PDUs per association.

:func:`received_payload` gives the receive path what it needs from an event in either mode
(file, or pynetdicom's in-memory bytes when the switch is off, e.g. in another process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

logger = logging.getLogger(__name__)

_HEADER_DEFER_BYTES = 64 * 1024
"""Values larger than this are not read for the header check (read on access, if ever)."""


def stream_received_datasets() -> None:
    """Make pynetdicom stream every received C-STORE data set to a temporary file.

    A process-wide pynetdicom setting (as ``STORE_SEND_CHUNKED_DATASET`` for sending): every
    ``EVT_C_STORE`` handler in this process then gets ``event.dataset_path`` and no bytes in
    ``event.request.DataSet``; bonect's handlers read events with :func:`received_payload`.
    """
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True


RECEIVING = "receiving"
"""The folder in the storage folder that data sets are streamed into by the daemon."""


def receive_into(folder: Path) -> int:
    """Make this process's temporary files (pynetdicom's streamed data sets among them) go to
    ``folder``, created if missing, after deleting what a killed process left there; returns
    how many files that was.

    Process-wide (:data:`tempfile.tempdir`): for the daemon's own process, at start, before
    anything is received, by the one process that receives into this storage folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for stray in folder.iterdir():
        if stray.is_file():
            with contextlib.suppress(FileNotFoundError):
                stray.unlink()
                removed += 1
    if removed:
        logger.warning("removed %d data set(s) a stopped daemon was receiving", removed)
    tempfile.tempdir = str(folder)
    return removed


@dataclass(frozen=True, slots=True)
class Payload:
    """One received data set as the receive path takes it."""

    dataset: Callable[[], Dataset]  # its header (pixel data neither read nor decoded)
    encoded: Callable[[], bytes | Path]  # the instance as received: a file, or bytes
    size: int  # bytes as received (with the file meta, when it is a file)


def received_payload(event: Event) -> Payload:
    """What an ``EVT_C_STORE`` event carries: a streamed file, or pynetdicom's bytes."""
    path = _dataset_path(event)
    if path is None:
        encoded: bytes = event.encoded_dataset()
        return Payload(lambda: event.dataset, lambda: encoded, len(encoded))
    return Payload(lambda: read_header_dataset(path), lambda: path, path.stat().st_size)


def read_header_dataset(path: Path) -> Dataset:
    """The data set of a DICOM file up to its pixel data, large values left unread."""
    return dcmread(path, stop_before_pixels=True, defer_size=_HEADER_DEFER_BYTES)


def _dataset_path(event: Event) -> Path | None:
    try:
        path: Path | None = event.dataset_path
    except AttributeError:  # not a C-STORE, or pynetdicom was not asked to stream
        return None
    return path if isinstance(path, Path) else None


class DatasetGuard:
    """Per association: abort one whose C-STORE data set grows past ``abort_bytes``, and remove
    the temporary files of data sets no handler will see (cut short, or queued when the
    association ended). Its methods are pynetdicom event handlers."""

    def __init__(self, abort_bytes: int, *, on_abort: Callable[[Association, int], None]) -> None:
        """Abort past ``abort_bytes`` of one data set; ``on_abort(assoc, received)`` says why
        (once per association, before the A-ABORT is sent)."""
        self.abort_bytes = abort_bytes
        self._on_abort = on_abort
        self._received: weakref.WeakKeyDictionary[Association, int] = weakref.WeakKeyDictionary()
        self._aborted: weakref.WeakSet[Association] = weakref.WeakSet()
        self._lock = threading.Lock()

    def on_pdu_recv(self, event: Event) -> None:
        """``EVT_PDU_RECV``: count the data-set bytes of the message being received."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:  # not a P-DATA-TF
            return
        assoc = event.assoc
        with self._lock:
            received = self._received.get(assoc, 0)
            for item in items:
                value: bytes = item.presentation_data_value or b"\x00"
                if value[0] & 0x01:  # a command fragment: a new message
                    received = 0
                else:
                    received += len(value) - 1
            self._received[assoc] = received
            if received <= self.abort_bytes or assoc in self._aborted:
                return
            self._aborted.add(assoc)
        self._on_abort(assoc, received)
        assoc.abort()  # in a handler: queues the A-ABORT and returns

    def on_conn_close(self, event: Event) -> None:
        """``EVT_CONN_CLOSE``: remove the files of the data sets no handler will see."""
        with self._lock:
            self._received.pop(event.assoc, None)
        discard_unhandled_datasets(event.assoc)


def discard_unhandled_datasets(assoc: Association) -> None:
    """Close and delete the temporary files of the C-STORE data sets no handler will see.

    Two kinds, both of which pynetdicom leaves behind when an association ends:

    * the data set still being received (kept on the message being decoded,
      ``assoc.dimse.message``, under private names);
    * data sets received whole but still queued (``assoc.dimse.msg_queue``) behind a handler
      that had not returned: a sender that times out on one response may send the next on the
      same association (DCMTK's ``dcmsend`` does) and then give up; the reactor stops at the
      end of the association without taking them off the queue.

    Called once the connection is closed: nothing more is written to those files, and nothing
    could be answered on it any more. Never raises."""
    try:
        dimse: Any = assoc.dimse
        message: Any = getattr(dimse, "message", None)
        files: list[Any] = [getattr(message, "_data_set_file", None)]
        while True:
            try:
                _, primitive = dimse.msg_queue.get_nowait()
            except queue.Empty:
                break
            files.append(getattr(primitive, "_dataset_file", None))
        for file in files:
            if file is None:
                continue
            name = str(file.name)
            file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            logger.debug("removed the unhandled data set at %s", name)
    except Exception:
        logger.exception("cannot remove the temporary file of an unhandled data set")
