"""The C-STORE SCU against an in-process SCP that answers chosen statuses, and against Orthanc."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import split_dataset
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from bonect.catalog.jobs import JobState
from bonect.config import Destination, SenderConfig, SendTransport
from bonect.daemon import dcmsend
from bonect.daemon.sender import (
    DestinationNode,
    RetryPolicy,
    SendOutcome,
    SendReport,
    SendTimeouts,
    UnsendableFileError,
    echo,
    send_batches,
    send_files,
)
from bonect.phantom.cohort import WrittenPatient
from catalog.catalog_support import FakeClock
from daemon.node_support import (
    LOCALHOST,
    OpenNode,
    Pacs,
    assert_no_patient_identity_logged,
    assert_one_sct_series,
    count_dcmsend_runs,
)
from daemon.node_support import mr_files as mr_files_of
from dicom_peers import OrthancServer, free_port, have
from series_factory import make_mr_series, write_series

FAST = SendTimeouts(connect=5, acse=5, dimse=5, network=5)


@dataclass
class FakePacs:
    """A pynetdicom Storage SCP answering ``statuses[sop uid]`` (default success).

    A C-STORE of an instance in ``stall`` is answered only once ``unstall`` is set, so the
    sender's response timeout fires first; one in ``abort`` aborts the association.
    """

    statuses: dict[str, int] = field(default_factory=dict)
    stall: set[str] = field(default_factory=set)
    abort: set[str] = field(default_factory=set)  # A-ABORT instead of answering these
    unstall: threading.Event = field(default_factory=threading.Event)
    received: dict[str, bytes] = field(default_factory=dict)
    requested: list[list[tuple[str, tuple[str, ...]]]] = field(default_factory=list)
    calling_aes: list[str] = field(default_factory=list)
    associations: int = 0
    server: ThreadedAssociationServer | None = None

    def on_requested(self, event: Event) -> None:
        self.associations += 1
        self.calling_aes.append(str(event.assoc.requestor.primitive.calling_ae_title).strip())
        contexts = event.assoc.requestor.requested_contexts
        self.requested.append(
            [
                (str(cx.abstract_syntax), tuple(str(t) for t in cx.transfer_syntax))
                for cx in contexts
            ]
        )

    def on_store(self, event: Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in self.stall:
            self.unstall.wait(30)
        if uid in self.abort:
            event.assoc.abort()
            return 0xC000  # never reaches the sender: the association is gone
        self.received[uid] = _data_set_bytes(event)
        return self.statuses.get(uid, 0x0000)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])


def start_fake_pacs(transfer_syntaxes: Sequence[str] | None = None) -> tuple[AE, FakePacs]:
    pacs = FakePacs()
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(
                cx.abstract_syntax,
                list(transfer_syntaxes or [ExplicitVRLittleEndian, JPEGLSLossless]),
            )
    pacs.server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_REQUESTED, pacs.on_requested), (evt.EVT_C_STORE, pacs.on_store)],
    )
    return ae, pacs


@pytest.fixture
def fake_pacs(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePacs]:
    # in memory, whatever an earlier test's bonect SCP set for the process: this PACS has no
    # DatasetGuard, and a data set queued behind a stalled one would leave its file in /tmp
    monkeypatch.setattr(pynetdicom_config, "STORE_RECV_CHUNKED_DATASET", False)
    ae, pacs = start_fake_pacs()
    yield pacs
    pacs.unstall.set()
    ae.shutdown()


def node(port: int, ae_title: str = "PACS") -> DestinationNode:
    return DestinationNode(ae_title=ae_title, host="127.0.0.1", port=port)


def dataset_bytes(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def _data_set_bytes(event: Event) -> bytes:
    """The data set as sent, in either of pynetdicom's receive modes (a Storage SCP started in
    this process streams every received data set to a file)."""
    path = event.dataset_path  # None when pynetdicom was not asked to stream
    return event.encoded_dataset(include_meta=False) if path is None else dataset_bytes(path)


def mr_files(
    folder: Path, n: int = 3, *, compressed: bool = False, modality: str = "MR"
) -> list[Path]:
    datasets = make_mr_series((n, 32, 32), modality=modality)
    if compressed:
        for ds in datasets:
            ds.compress(JPEGLSLossless)
    return write_series(datasets, folder)


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_statuses_decide_the_outcome_and_each_is_reported(
    fake_pacs: FakePacs, tmp_path: Path
) -> None:
    paths = mr_files(tmp_path, 5)
    uids = [uid_of(p) for p in paths]
    fake_pacs.statuses = {uids[1]: 0xB000, uids[2]: 0xA700, uids[3]: 0xB007, uids[4]: 0xB006}
    calls: list[tuple[str, int | None, str | None]] = []

    report = send_files(
        paths,
        node(fake_pacs.port),
        calling_ae="BONECT",
        timeouts=FAST,
        on_result=lambda uid, status, error: calls.append((uid, status, error)),
    )

    assert report.stored == (uids[0], uids[1], uids[3], uids[4])
    assert report.failed == (uids[2],)
    assert report.unknown == () and not report.all_stored
    assert calls == [
        (uids[0], 0x0000, None),
        (uids[1], 0xB000, None),
        (uids[2], 0xA700, "status 0xA700"),
        (uids[3], 0xB007, None),
        (uids[4], 0xB006, None),
    ]
    assert fake_pacs.associations == 1


@pytest.mark.parametrize("compressed", [False, True], ids=["explicit-le", "jpeg-ls"])
def test_files_are_sent_as_stored(fake_pacs: FakePacs, tmp_path: Path, compressed: bool) -> None:
    paths = mr_files(tmp_path, 3, compressed=compressed)

    report = send_files(paths, node(fake_pacs.port), calling_ae="BONECT", timeouts=FAST)

    assert report.all_stored
    for path in paths:
        assert fake_pacs.received[uid_of(path)] == dataset_bytes(path)


def test_only_the_sop_classes_and_syntaxes_sent_are_proposed(
    fake_pacs: FakePacs, tmp_path: Path
) -> None:
    paths = (
        mr_files(tmp_path / "mr", 2)
        + mr_files(tmp_path / "jls", 2, compressed=True)
        + mr_files(tmp_path / "ct", 2, modality="CT")
    )

    assert send_files(paths, node(fake_pacs.port), calling_ae="BONECT", timeouts=FAST).all_stored

    (proposed,) = fake_pacs.requested
    assert sorted(proposed) == sorted(
        [
            (CTImageStorage, (ExplicitVRLittleEndian,)),
            (MRImageStorage, (ExplicitVRLittleEndian,)),
            (MRImageStorage, (JPEGLSLossless,)),
        ]
    )


def test_a_syntax_the_destination_refuses_fails_that_file_only(tmp_path: Path) -> None:
    ae, pacs = start_fake_pacs([ExplicitVRLittleEndian])
    try:
        plain, jls = mr_files(tmp_path / "a", 1), mr_files(tmp_path / "b", 1, compressed=True)
        report = send_files(plain + jls, node(pacs.port), calling_ae="BONECT", timeouts=FAST)
    finally:
        ae.shutdown()
    assert report.stored == (uid_of(plain[0]),)
    (failure,) = [r for r in report.results if r.outcome is SendOutcome.FAILED]
    assert failure.status is None and failure.error is not None and "accept" in failure.error


def test_a_response_timeout_is_unknown_and_the_rest_is_still_sent(
    fake_pacs: FakePacs, tmp_path: Path
) -> None:
    paths = mr_files(tmp_path, 3)
    uids = [uid_of(p) for p in paths]
    fake_pacs.stall = {uids[1]}
    calls: list[tuple[str, int | None, str | None]] = []

    report = send_files(
        paths,
        node(fake_pacs.port),
        calling_ae="BONECT",
        timeouts=SendTimeouts(connect=5, acse=5, dimse=0.5, network=5),
        on_result=lambda uid, status, error: calls.append((uid, status, error)),
    )

    assert report.stored == (uids[0], uids[2])
    assert report.unknown == (uids[1],)
    assert [(uid, status) for uid, status, _ in calls] == [
        (uids[0], 0x0000),
        (uids[1], None),
        (uids[2], 0x0000),
    ]
    assert fake_pacs.associations == 2  # a new association after the abort


def test_a_destination_that_is_down_leaves_everything_unknown(tmp_path: Path) -> None:
    paths = mr_files(tmp_path, 2)
    report = send_files(paths, node(free_port()), calling_ae="BONECT", timeouts=FAST)
    assert report.unknown == tuple(uid_of(p) for p in paths)
    assert all(r.status is None and r.error for r in report.results)


def test_a_file_that_is_not_dicom_is_refused_before_sending(
    fake_pacs: FakePacs, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    with pytest.raises(UnsendableFileError) as info:
        send_files([*mr_files(tmp_path, 1), text], node(fake_pacs.port), calling_ae="BONECT")
    assert info.value.path == text
    assert fake_pacs.associations == 0


def test_echo(fake_pacs: FakePacs) -> None:
    assert echo(node(fake_pacs.port), "BONECT", timeouts=FAST)
    assert not echo(node(free_port()), "BONECT", timeouts=FAST)


def test_destination_node_from_config() -> None:
    destination = Destination(name="pacs", ae_title="PACS", host="10.0.0.5", port=104)
    assert DestinationNode.from_config(destination) == DestinationNode("PACS", "10.0.0.5", 104)


def test_retry_policy_backs_off_exponentially_up_to_a_cap() -> None:
    policy = RetryPolicy(initial_seconds=10, factor=2, cap_seconds=60)
    delays = [policy.delay(attempt) for attempt in range(1, 7)]
    assert delays == [timedelta(seconds=s) for s in (10, 20, 40, 60, 60, 60)]
    assert policy.delay(10_000) == timedelta(seconds=60)
    assert RetryPolicy(initial_seconds=5, factor=1, cap_seconds=5).delay(3) == timedelta(seconds=5)
    with pytest.raises(ValueError):
        policy.delay(0)
    with pytest.raises(ValueError):
        RetryPolicy(initial_seconds=10, cap_seconds=5)


needs_orthanc = pytest.mark.skipif(not have("Orthanc"), reason="Orthanc is not installed")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    if not have("Orthanc"):
        pytest.skip("Orthanc is not installed")
    with OrthancServer(tmp_path_factory.mktemp("orthanc"), allowed_aets=("BONECT",)) as server:
        yield server


@needs_orthanc
def test_orthanc_stores_a_series_once_however_often_it_is_sent(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    paths = mr_files(tmp_path / "mr", 5) + mr_files(tmp_path / "jls", 2, compressed=True)
    uids = sorted(uid_of(p) for p in paths)
    pacs = node(orthanc.dicom_port)

    first = send_files(paths, pacs, calling_ae="BONECT", timeouts=FAST)
    again = send_files(paths, pacs, calling_ae="BONECT", timeouts=FAST)

    assert first.all_stored and again.all_stored
    stored = [uid for uid in orthanc.sop_instance_uids() if uid in set(uids)]
    assert sorted(stored) == uids  # each once


@needs_orthanc
def test_orthanc_refuses_an_unknown_calling_ae(orthanc: OrthancServer, tmp_path: Path) -> None:
    pacs = node(orthanc.dicom_port)
    assert echo(pacs, "BONECT", timeouts=FAST)
    assert not echo(pacs, "STRANGER", timeouts=FAST)
    report = send_files(mr_files(tmp_path, 1), pacs, calling_ae="STRANGER", timeouts=FAST)
    assert report.unknown and report.results[0].error == "association rejected"


# --- the dcmsend transport: DCMTK dcmsend processes, each instance's status off its report ---

needs_dcmsend = pytest.mark.skipif(not have("dcmsend"), reason="DCMTK dcmsend is not installed")
TRANSPORTS: tuple[SendTransport, ...] = ("pynetdicom", "dcmsend")
Call = tuple[str, int | None, str | None]


def _send_recording(
    paths: Sequence[Path],
    port: int,
    transport: SendTransport,
    timeouts: SendTimeouts = FAST,
    **kwargs: Any,
) -> tuple[SendReport, list[Call]]:
    calls: list[Call] = []
    report = send_files(
        paths,
        node(port),
        calling_ae="BONECT",
        timeouts=timeouts,
        on_result=lambda uid, status, error: calls.append((uid, status, error)),
        transport=transport,
        **kwargs,
    )
    return report, calls


@needs_dcmsend
def test_dcmsend_reports_each_status_as_pynetdicom_does(
    fake_pacs: FakePacs, tmp_path: Path
) -> None:
    paths = mr_files(tmp_path, 6)
    uids = [uid_of(p) for p in paths]
    fake_pacs.statuses = {
        uids[1]: 0xB000,
        uids[2]: 0xA700,
        uids[3]: 0xB007,
        uids[4]: 0xB006,
        uids[5]: 0xC000,
    }

    report, calls = _send_recording(paths, fake_pacs.port, "dcmsend")

    assert report.stored == (uids[0], uids[1], uids[3], uids[4])
    assert report.failed == (uids[2], uids[5]) and report.unknown == ()
    assert calls == [
        (uids[0], 0x0000, None),
        (uids[1], 0xB000, None),
        (uids[2], 0xA700, "status 0xA700"),
        (uids[3], 0xB007, None),
        (uids[4], 0xB006, None),
        (uids[5], 0xC000, "status 0xC000"),
    ]
    assert fake_pacs.associations == 1 and fake_pacs.calling_aes == ["BONECT"]


@needs_dcmsend
@pytest.mark.parametrize("compressed", [False, True], ids=["explicit-le", "jpeg-ls"])
def test_dcmsend_sends_files_as_stored(
    fake_pacs: FakePacs, tmp_path: Path, compressed: bool
) -> None:
    paths = mr_files(tmp_path, 3, compressed=compressed)

    report, _ = _send_recording(paths, fake_pacs.port, "dcmsend")

    assert report.all_stored
    for path in paths:
        assert fake_pacs.received[uid_of(path)] == dataset_bytes(path)


@needs_dcmsend
def test_dcmsend_a_syntax_the_destination_refuses_fails_that_file_only(tmp_path: Path) -> None:
    ae, pacs = start_fake_pacs([ExplicitVRLittleEndian])
    try:
        plain, jls = mr_files(tmp_path / "a", 2), mr_files(tmp_path / "b", 1, compressed=True)
        report, calls = _send_recording(plain + jls, pacs.port, "dcmsend")
    finally:
        ae.shutdown()
    assert report.stored == tuple(uid_of(p) for p in plain)
    assert calls[-1] == (
        uid_of(jls[0]),
        None,
        "destination does not accept this SOP class / syntax",
    )


@needs_dcmsend
def test_dcmsend_batches_are_each_sent_as_they_come_and_reported_as_one_send(
    fake_pacs: FakePacs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = mr_files(tmp_path, 4)
    uids = [uid_of(p) for p in paths]
    fake_pacs.statuses = {uids[2]: 0xA700}
    runs = count_dcmsend_runs(monkeypatch)
    calls: list[Call] = []

    report = send_batches(
        iter([paths[:1], paths[1:]]),
        node(fake_pacs.port),
        calling_ae="BONECT",
        timeouts=FAST,
        on_result=lambda uid, status, error: calls.append((uid, status, error)),
    )

    assert runs == [1, 3]
    assert report.stored == (uids[0], uids[1], uids[3]) and report.failed == (uids[2],)
    assert calls == [
        (uids[0], 0x0000, None),
        (uids[1], 0x0000, None),
        (uids[2], 0xA700, "status 0xA700"),
        (uids[3], 0x0000, None),
    ]
    assert fake_pacs.associations == 2


@needs_dcmsend
def test_dcmsend_batches_after_a_failed_association_are_unknown_without_trying_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = mr_files(tmp_path, 3)
    runs = count_dcmsend_runs(monkeypatch)
    report = send_batches(
        iter([paths[:1], paths[1:]]), node(free_port()), calling_ae="BONECT", timeouts=FAST
    )
    assert runs == [1]  # the destination is down: the second batch is not tried
    assert report.unknown == tuple(uid_of(p) for p in paths)
    assert {r.error for r in report.results} == {"association failed"}


@needs_dcmsend
def test_dcmsend_to_a_destination_that_is_down_leaves_everything_unknown(tmp_path: Path) -> None:
    paths = mr_files(tmp_path, 2)
    report, calls = _send_recording(paths, free_port(), "dcmsend")
    assert report.unknown == tuple(uid_of(p) for p in paths)
    assert calls == [(uid_of(p), None, "association failed") for p in paths]


@needs_dcmsend
def test_dcmsend_a_response_timeout_is_unknown_and_not_sent_again_in_the_call(
    fake_pacs: FakePacs, tmp_path: Path
) -> None:
    paths = mr_files(tmp_path, 3)
    uids = [uid_of(p) for p in paths]
    fake_pacs.stall = {uids[1]}

    _, calls = _send_recording(
        paths,
        fake_pacs.port,
        "dcmsend",
        timeouts=SendTimeouts(connect=5, acse=2, dimse=1, network=5),
    )

    # dcmsend keeps the association after a timeout: the third waits behind the stalled one
    no_response = "no response (timeout or association aborted)"
    assert calls == [
        (uids[0], 0x0000, None),
        (uids[1], None, no_response),
        (uids[2], None, no_response),
    ]
    assert fake_pacs.associations == 1


@needs_dcmsend
def test_dcmsend_after_an_abort_sends_the_rest_on_a_new_association(
    fake_pacs: FakePacs, tmp_path: Path
) -> None:
    paths = mr_files(tmp_path, 5)
    uids = [uid_of(p) for p in paths]
    fake_pacs.abort = {uids[2]}

    report, calls = _send_recording(paths, fake_pacs.port, "dcmsend")

    assert report.stored == (uids[0], uids[1], uids[3], uids[4])
    assert report.unknown == (uids[2],) and report.failed == ()
    assert [(uid, status) for uid, status, _ in calls] == [
        (uids[0], 0x0000),
        (uids[1], 0x0000),
        (uids[2], None),
        (uids[3], 0x0000),
        (uids[4], 0x0000),
    ]
    assert fake_pacs.associations == 2


@needs_dcmsend
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_destination_that_takes_none_of_the_syntaxes_fails_them_all(
    tmp_path: Path, transport: SendTransport
) -> None:
    ae, pacs = start_fake_pacs([ExplicitVRLittleEndian])
    try:
        jls = mr_files(tmp_path, 2, compressed=True)
        report, calls = _send_recording(jls, pacs.port, transport)
    finally:
        ae.shutdown()
    assert report.failed == tuple(uid_of(p) for p in jls)
    assert calls == [
        (uid_of(p), None, "destination does not accept this SOP class / syntax") for p in jls
    ]
    assert pacs.received == {}


@needs_dcmsend
def test_dcmsend_report_is_parsed_per_instance(fake_pacs: FakePacs, tmp_path: Path) -> None:
    """The parser on dcmsend's own report and log: one entry per file, in order."""
    plain, jls = mr_files(tmp_path / "a", 2), mr_files(tmp_path / "b", 1, compressed=True)
    fake_pacs.statuses = {uid_of(plain[1]): 0xA702}
    request = dcmsend.DcmsendRequest("127.0.0.1", fake_pacs.port, "PACS", "BONECT", 5, 5, 5, 5)

    run = dcmsend.run_dcmsend(request, plain + jls)

    assert run.returncode == 0 and run.failure is None
    assert [e.filename for e in run.entries] == [str(p) for p in plain + jls]
    assert [e.sop_instance_uid for e in run.entries] == [uid_of(p) for p in plain + jls]
    assert [e.status for e in run.entries] == [0x0000, 0xA702, 0x0000]
    assert [e.network_transfer_syntax for e in run.entries] == [
        ExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        JPEGLSLossless,
    ]
    assert all(e.association == 1 and not e.no_context for e in run.entries)
    assert run.contexts == {1: {e.presentation_context: True for e in run.entries}}


@needs_dcmsend
def test_dcmsend_output_stays_at_debug(
    fake_pacs: FakePacs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """dcmsend's verbose log names files (and could name more): never above DEBUG."""
    paths = mr_files(tmp_path, 2)
    fake_pacs.statuses = {uid_of(paths[1]): 0xA700}
    with caplog.at_level(logging.DEBUG):
        report, _ = _send_recording(paths, fake_pacs.port, "dcmsend")
    assert report.failed == (uid_of(paths[1]),)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("C-STORE Request" in m for m in debug)  # the log was read, at DEBUG
    above = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert above and not any(str(tmp_path) in m or "C-STORE" in m for m in above)


def test_dcmsend_refuses_tls(tmp_path: Path) -> None:
    import ssl

    with pytest.raises(ValueError, match="dcmsend has no TLS"):
        send_files(
            mr_files(tmp_path, 1),
            node(free_port()),
            calling_ae="BONECT",
            ssl_context=ssl.create_default_context(),
            transport="dcmsend",
        )


def _ledger(
    tmp_path: Path, paths: Sequence[Path], port: int, transport: SendTransport
) -> list[tuple[str, str, int | None, str | None, int]]:
    """The send ledger of one job after one send, recorded by the worker's own recorder."""
    from bonect.catalog import Catalog, SendStatus, catalog_url
    from bonect.daemon.worker import Worker
    from catalog.catalog_support import FakeClock, receive, series_headers

    clock = FakeClock()
    catalog = Catalog.open(catalog_url(tmp_path / transport, ""))
    try:
        receive(catalog, series_headers(1), clock.now())
        catalog.enqueue_job(series_headers(1)[0].series_uid, clock.now())
        job = catalog.claim_next(clock.now(), "w1")
        assert job is not None
        catalog.plan_sends(job, [(uid_of(p), p) for p in paths], ["pacs"], now=clock.now())
        worker = cast(Worker, SimpleNamespace(catalog=catalog, clock=clock.now))
        pending = [s.path for s in catalog.pending_sends(job)]
        send_files(
            pending,
            node(port),
            calling_ae="BONECT",
            timeouts=FAST,
            on_result=Worker._send_recorder(worker, job, "pacs"),
            transport=transport,
        )
        assert {s.status for s in catalog.pending_sends(job)} <= {SendStatus.PENDING}
        return sorted(
            (s.sop_instance_uid, str(s.status), s.last_status_code, s.last_error, s.attempts)
            for s in catalog.sends(job)
        )
    finally:
        catalog.close()


@needs_dcmsend
def test_both_transports_leave_the_same_send_ledger(tmp_path: Path) -> None:
    ae, pacs = start_fake_pacs([ExplicitVRLittleEndian])
    try:
        paths = mr_files(tmp_path / "mr", 5) + mr_files(tmp_path / "jls", 1, compressed=True)
        uids = [uid_of(p) for p in paths]
        pacs.statuses = {uids[1]: 0xA700, uids[2]: 0xB000, uids[3]: 0xC000}
        ledgers = {t: _ledger(tmp_path, paths, pacs.port, t) for t in TRANSPORTS}
        down = {t: _ledger(tmp_path / "down", paths, free_port(), t) for t in TRANSPORTS}
    finally:
        ae.shutdown()
    assert ledgers["pynetdicom"] == ledgers["dcmsend"]
    by_uid = {row[0]: row[1:4] for row in ledgers["dcmsend"]}
    assert by_uid[uids[0]] == ("stored", 0x0000, None)
    assert by_uid[uids[1]] == ("pending", 0xA700, "status 0xA700")
    assert by_uid[uids[2]] == ("stored", 0xB000, None)
    assert by_uid[uids[3]] == ("pending", 0xC000, "status 0xC000")
    assert by_uid[uids[5]][:2] == ("pending", None)  # no presentation context for JPEG-LS
    assert down["pynetdicom"] == down["dcmsend"]
    assert {row[1:4] for row in down["dcmsend"]} == {("pending", None, "association failed")}


@needs_dcmsend
@needs_orthanc
def test_dcmsend_to_orthanc_stores_a_series_once(orthanc: OrthancServer, tmp_path: Path) -> None:
    paths = mr_files(tmp_path / "mr", 5) + mr_files(tmp_path / "jls", 2, compressed=True)
    uids = sorted(uid_of(p) for p in paths)
    pacs = node(orthanc.dicom_port)

    first, calls = _send_recording(paths, orthanc.dicom_port, "dcmsend")
    again = send_files(paths, pacs, calling_ae="BONECT", timeouts=FAST, transport="dcmsend")

    assert first.all_stored and again.all_stored
    assert sorted(uid for uid, _, _ in calls) == uids
    stored = [uid for uid in orthanc.sop_instance_uids() if uid in set(uids)]
    assert sorted(stored) == uids  # each once


@needs_dcmsend
@needs_orthanc
def test_dcmsend_orthanc_refuses_an_unknown_calling_ae(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    report = send_files(
        mr_files(tmp_path, 1),
        node(orthanc.dicom_port),
        calling_ae="STRANGER",
        timeouts=FAST,
        transport="dcmsend",
    )
    assert report.unknown and report.results[0].error == "association rejected"


@needs_dcmsend
def test_a_node_with_the_dcmsend_transport_sends_the_sct_and_records_each_instance(
    open_node: OpenNode,
    pacs: Pacs,
    clock: FakeClock,
    phantom_written: WrittenPatient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``[sender] transport = "dcmsend"`` end to end: the worker's sends go through dcmsend,
    and every answer lands in the send ledger."""
    caplog.set_level(logging.DEBUG, logger="bonect")
    node_ = open_node([pacs.destination("pacs")], sender=SenderConfig(transport="dcmsend"))
    mr = mr_files_of(phantom_written)
    sent = send_files(mr, DestinationNode("BONECT", LOCALHOST, node_.server.port), calling_ae="MOD")
    assert sent.all_stored
    assert node_.wake.wait(timeout=30.0)

    assert node_.step(clock.now()) is True
    (job,) = node_.catalog.jobs()
    assert job.state == JobState.DONE, job.last_error
    assert_one_sct_series(pacs, mr)
    sends = node_.catalog.sends(job)
    assert len(sends) == len(mr)
    assert {(str(s.status), s.last_status_code) for s in sends} == {("stored", 0x0000)}
    assert any("C-STORE Request" in r.getMessage() for r in caplog.records)  # dcmsend's log
    assert_no_patient_identity_logged(caplog, mr)
