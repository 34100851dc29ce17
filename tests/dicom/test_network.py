"""Tests of the socket and wire helpers shared by the Storage SCP and the C-STORE SCU."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bonect.dicom.network import WireResponses, monotonic_association_timers, set_nodelay


def _nodelay(event: Event) -> int:
    sock = event.assoc.dul.socket
    assert sock is not None and sock.socket is not None
    return int(sock.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_both_ends_of_an_association_switch_nagle_off() -> None:
    seen: dict[str, int] = {}

    def record(side: str) -> evt.EventHandlerType:
        return (evt.EVT_CONN_OPEN, lambda event: seen.__setitem__(side, _nodelay(event)))

    scp = AE(ae_title="SCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), record("acceptor")],
    )
    assert server is not None
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate(
            "127.0.0.1",
            server.server_address[1],
            ae_title="SCP",
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), record("requestor")],
        )
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        scp.shutdown()
    assert seen == {"acceptor": 1, "requestor": 1}


def test_a_response_seen_on_the_wire_is_kept_if_pynetdicom_loses_it() -> None:
    wire = WireResponses()
    rsp = Dataset()
    rsp.CommandField = 0x8001  # C-STORE-RSP
    rsp.MessageIDBeingRespondedTo = 7
    rsp.Status = 0xB000
    rq = Dataset()
    rq.CommandField = 0x0001  # C-STORE-RQ: ignored
    rq.MessageID = 8
    for command in (rsp, rq):
        wire.on_dimse_recv(SimpleNamespace(message=SimpleNamespace(command_set=command)))  # type: ignore[arg-type]
    assert wire.status(7) == 0xB000 and wire.status(8) is None


def test_a_step_of_the_wall_clock_does_not_expire_pynetdicoms_timers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pynetdicom's Timer (ARTIM, the idle timeout) read time.time(): +1 h on the wall clock
    expired a 60 s timer at once and aborted the association. On the monotonic clock it does
    not step."""
    import time

    import pynetdicom.timer
    from pynetdicom.timer import Timer

    monkeypatch.setattr(pynetdicom.timer, "time", pynetdicom.timer.time)  # restored after
    monotonic_association_timers()
    timer = Timer(60)
    timer.start()
    wall = time.time()
    monkeypatch.setattr(time, "time", lambda: wall + 3600.0)  # the wall clock steps +1 h
    assert not timer.expired
    assert 0 < timer.remaining <= 60
