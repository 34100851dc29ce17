"""The size limit of a received data set, and memory bounded while one streams in.

A C-STORE data set is streamed to a file as it arrives (never held whole in memory): one over
``max_dataset_bytes`` is answered 0xA700 and deleted, the association goes on; one that grows
past twice the limit aborts its association there. The receiving process's peak RSS is read
from ``VmHWM`` after resetting it (``/proc/self/clear_refs``), while DCMTK ``storescu``, another
process, sends: what is measured is the node's own memory.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from bonect.daemon.incoming import RECEIVING, receive_into
from bonect.daemon.receive import OUT_OF_RESOURCES, SUCCESS
from bonect.dicom.header import InstanceHeader
from daemon.scp_support import RecordingSink, ScpNode, StartNode, associate
from dicom_peers import have, storescu
from series_factory import make_mr_series, write_series

MB = 1024 * 1024
FRAME = 1024 * 1024 * 2  # one 1024 x 1024 frame of 16-bit pixels
needs_storescu = pytest.mark.skipif(not have("storescu"), reason="needs DCMTK storescu")
needs_dcmsend = pytest.mark.skipif(not have("dcmsend"), reason="needs DCMTK dcmsend")


@pytest.fixture
def streamed_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """pynetdicom's temporary files go here (``$TMPDIR``), to be checked for leftovers."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder


def big_mr(path: Path, frames: int) -> Path:
    """An MR instance of ``frames`` 1024² frames, written without holding its pixels."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "MR"
    ds.PatientID = "LIMIT-TEST"
    ds.Rows = ds.Columns = 1024
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    size = frames * FRAME
    with path.open("ab") as f:  # (7FE0,0010) OW, explicit VR little endian; zeros, sparse
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little"))
        f.truncate(f.tell() + size)
    return path


def peak_rss_rise(action: Callable[[], object]) -> int:
    """How far the peak RSS of this process rose above its RSS during ``action()``."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    action()
    return (_status_kb("VmHWM") - before) * 1024


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def archived(node: ScpNode) -> list[Path]:
    return [p for p in node.archive.incoming.rglob("*") if p.is_file()]


def test_a_dataset_over_the_limit_is_refused_and_the_association_goes_on(
    start_node: StartNode, streamed_to: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(max_dataset_bytes=2 * MB)
    large = big_mr(tmp_path / "large.dcm", frames=1)  # 2 MB and some: over the limit
    small = write_series(make_mr_series(), tmp_path / "small")[0]
    assoc = associate(node.server.port)
    try:
        refused = assoc.send_c_store(large)
        stored = assoc.send_c_store(small)
    finally:
        assoc.release()
    assert refused.Status == OUT_OF_RESOURCES
    assert stored.Status == SUCCESS
    assert [r.header.sop_instance_uid for r in node.sink.records] == [dcmread(small).SOPInstanceUID]
    assert archived(node) == [node.sink.records[0].path]
    assert list(streamed_to.iterdir()) == []  # the refused data set's file is gone
    (line,) = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("bonect") and r.levelno >= logging.WARNING
    ]
    assert "0xA700" in line and "storage.max_dataset_mb" in line
    assert "LIMIT-TEST" not in caplog.text


def test_an_instance_under_the_limit_is_stored_as_received(
    start_node: StartNode, streamed_to: Path, tmp_path: Path
) -> None:
    node = start_node(max_dataset_bytes=8 * MB)
    sent = big_mr(tmp_path / "mr.dcm", frames=2)
    assoc = associate(node.server.port)
    try:
        assert assoc.send_c_store(sent).Status == SUCCESS
    finally:
        assoc.release()
    (path,) = archived(node)
    assert dcmread(path).SOPInstanceUID == dcmread(sent, stop_before_pixels=True).SOPInstanceUID
    assert path.read_bytes()[-2 * FRAME :] == sent.read_bytes()[-2 * FRAME :]
    assert list(streamed_to.iterdir()) == []  # taken by a rename (same file system)


@needs_storescu
def test_memory_stays_bounded_while_a_large_dataset_streams_in(
    start_node: StartNode, streamed_to: Path, tmp_path: Path
) -> None:
    node = start_node(max_dataset_bytes=256 * MB)
    sent = big_mr(tmp_path / "mr.dcm", frames=100)  # 200 MB: under the limit, stored
    done: list[int] = []
    rise = peak_rss_rise(lambda: done.append(storescu(node.server.port, [sent]).returncode))
    assert done == [0]
    assert len(archived(node)) == 1
    assert rise < 40 * MB, f"the node's RSS rose by {rise / MB:.0f} MB for a 200 MB data set"


@needs_storescu
def test_a_dataset_far_over_the_limit_is_aborted_with_memory_and_disk_bounded(
    start_node: StartNode, streamed_to: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(max_dataset_bytes=20 * MB)
    sent = big_mr(tmp_path / "mr.dcm", frames=100)  # 200 MB: past twice the limit
    done: list[int] = []
    rise = peak_rss_rise(lambda: done.append(storescu(node.server.port, [sent]).returncode))
    assert done != [0]  # aborted: nothing stored
    assert node.sink.records == [] and archived(node) == []
    assert node.server.join_associations(timeout=30)  # the connection is closed
    assert list(streamed_to.iterdir()) == []  # the partial file is removed
    assert rise < 40 * MB, f"the node's RSS rose by {rise / MB:.0f} MB for a 200 MB data set"
    (line,) = [r.getMessage() for r in caplog.records if "association aborted" in r.getMessage()]
    assert "a data set passed 40 MB" in line  # stopped at twice the limit: disk use bounded too


@dataclass
class HoldingSink(RecordingSink):
    """A sink that holds the first instance (its C-STORE unanswered) until ``release`` is set:
    a catalog slower than the sender's response timeout."""

    release: threading.Event = field(default_factory=threading.Event)

    def record(self, header: InstanceHeader, path: Path, **kwargs: Any) -> None:
        if not self.records:
            self.release.wait(60)
        super().record(header, path, **kwargs)


@needs_dcmsend
def test_data_sets_queued_behind_an_unanswered_one_leave_no_file_when_the_peer_gives_up(
    start_node: StartNode, streamed_to: Path, tmp_path: Path
) -> None:
    """DCMTK ``dcmsend`` keeps its association after a response timeout and sends the next
    files on it: they arrive whole and wait behind the unanswered one. When the peer gives up,
    no handler will ever see them, and pynetdicom does not delete their files."""
    node = start_node(sink=HoldingSink())
    sink = node.sink
    assert isinstance(sink, HoldingSink)
    files = write_series(make_mr_series((3, 32, 32)), tmp_path / "mr")
    try:
        # -nh: on to the next file after a failure; the release waits behind the held
        # instance too, so a short ACSE timeout ends it, and dcmsend closes the connection
        timeouts = ["--dimse-timeout", "1", "--acse-timeout", "2"]
        send = ["--no-halt", *timeouts]
        sent = storescu(node.server.port, files, extra_args=send, program="dcmsend")
    finally:
        sink.release.set()
    assert sent.stderr.count("Failed receiving DIMSE response") == 3, sent.stderr
    assert node.server.join_associations(timeout=30)
    assert len(sink.records) == 1  # the first arrived whole before the peer gave up
    assert list(streamed_to.iterdir()) == []  # the two queued behind it are gone


def test_the_daemon_streams_into_its_storage_folder_and_clears_what_a_kill_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bonect-daemon start`` (a receiving role) calls :func:`receive_into` on
    ``<storage>/receiving``: data sets stream onto the archive's disk (a rename away from it),
    not into a ``/tmp`` that may be memory, and the files of a killed daemon are removed."""
    monkeypatch.setattr(tempfile, "tempdir", None)
    folder = tmp_path / "storage" / RECEIVING
    folder.mkdir(parents=True)
    (folder / "tmpab12cd.dcm").write_bytes(b"half a data set")
    (folder / "tmpef34gh.dcm").write_bytes(b"another")
    assert receive_into(folder) == 2
    assert list(folder.iterdir()) == []
    assert tempfile.gettempdir() == str(folder)
    with tempfile.NamedTemporaryFile(suffix=".dcm") as streamed:  # as pynetdicom makes them
        assert Path(streamed.name).parent == folder
    assert receive_into(tmp_path / "new" / RECEIVING) == 0  # created when missing


def test_memory_stays_bounded_when_a_pdu_length_field_says_128_mb(start_node: StartNode) -> None:
    """A connection that declares a 128 MB A-ASSOCIATE-RQ, then sends it: far over any maximum
    PDU length, it should be refused from its length field rather than read into memory."""
    node = start_node()
    size = 128 * MB

    def send() -> None:
        address = ("127.0.0.1", node.server.port)
        # OSError: a node that refuses the PDU closes the connection
        with socket.create_connection(address, timeout=10) as sock, contextlib.suppress(OSError):
            sock.sendall(b"\x01\x00" + size.to_bytes(4, "big"))
            chunk = bytes(MB)
            for _ in range(size // MB):
                sock.sendall(chunk)
            while sock.recv(4096):  # until the node has read it all and closed
                pass

    rise = peak_rss_rise(send)
    assert rise < 40 * MB, f"the node's RSS rose by {rise / MB:.0f} MB for one 128 MB PDU"
