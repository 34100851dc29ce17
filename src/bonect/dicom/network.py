"""Socket and wire helpers shared by bonect's DICOM peers: the Storage SCP and the C-STORE SCU.

* :func:`set_nodelay`: an ``EVT_CONN_OPEN`` handler that switches Nagle's algorithm off, so a
  small PDU (a C-STORE-RSP, an A-RELEASE) is not held back waiting for the peer's ACK. Every
  socket bonect opens or accepts sets it.
* :class:`WireResponses`: C-STORE-RSP statuses as decoded off the wire, by message id (see
  ``FIELD-NOTES.md``: pynetdicom can lose a response that did arrive).

pynetdicom is imported only for type checking: the handlers take its events as they come.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pynetdicom.events import Event

C_STORE_RSP = 0x8001
"""CommandField (0000,0100) of a C-STORE-RSP."""


def set_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN handler: switch Nagle's algorithm off on the association's socket."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class WireResponses:
    """C-STORE-RSP statuses as decoded off the wire (``EVT_DIMSE_RECV``), by message id.

    pynetdicom's association reactor can take a response off the queue before
    ``send_c_store`` does (the stall in FIELD-NOTES.md): the call then times out although the
    destination answered. The status seen here still tells what the destination said.
    """

    def __init__(self) -> None:
        self._statuses: dict[int, int] = {}
        self._lock = threading.Lock()

    def on_dimse_recv(self, event: Event) -> None:
        """EVT_DIMSE_RECV handler: note the status of each C-STORE-RSP."""
        command = event.message.command_set
        if command is None or command.get("CommandField") != C_STORE_RSP:
            return
        msg_id, status = command.get("MessageIDBeingRespondedTo"), command.get("Status")
        if msg_id is not None and status is not None:
            with self._lock:
                self._statuses[int(msg_id)] = int(status)

    def status(self, msg_id: int) -> int | None:
        """The status the destination answered to message ``msg_id``, if one was seen."""
        with self._lock:
            return self._statuses.get(msg_id)


def monotonic_association_timers() -> None:
    """Make pynetdicom's timers (ARTIM, the network idle timeout) measure on the monotonic clock.

    pynetdicom 3.0.4's ``Timer`` subtracts ``time.time()`` readings: a forward step of the wall
    clock (NTP after a drift, a resumed VM) larger than the idle timeout expires it at once and
    aborts every open association (measured with libfaketime: +1 h mid-series aborted the
    modality's association in 3 of 5 runs). Its readings only ever measure elapsed time, so the
    monotonic clock is the right one. Called once by ``bonect-daemon start``; idempotent.
    """
    import pynetdicom.timer

    pynetdicom.timer.time = _MonotonicTime()  # type: ignore[attr-defined,assignment]


class _MonotonicTime:
    """What ``pynetdicom.timer`` calls ``time``: its ``time()`` is :func:`time.monotonic`."""

    @staticmethod
    def time() -> float:
        return time.monotonic()
