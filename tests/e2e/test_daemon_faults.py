"""Faults, end to end: `bonect-daemon start` killed, starved or fed bad input between real peers.

Every test ends at the PACS (Orthanc): one synthetic-CT series per converted MR series, one
instance per MR slice, SOP Instance UIDs unique and exactly those the daemon planned to send:
nothing lost, nothing duplicated. A series re-opened after it was converted ends with its newest
sCT series complete under UIDs of its own, and an IOCM rejection note for the earlier one.

The daemon runs as a subprocess and is watched from outside only: its SQLite catalog
(read-only), its operator commands and its log; the tests that need to control free disk space
(and the re-opened series) run the same :class:`Node` in this process instead.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context
from pynetdicom.association import Association

from bonect.config import load_config
from bonect.daemon.archive import Archive
from bonect.daemon.node import Node
from dicom_peers import LOCALHOST, OrthancServer, echoscu, free_port, have, storescu
from dicom_validation import dciodvfy_errors
from e2e.conftest import (
    POLL_S,
    CatalogView,
    Daemon,
    OrthancOnPort,
    Series,
    StartDaemon,
    assert_pacs_content_is_the_latest,
    assert_pacs_holds_a_replacement,
    assert_pacs_holds_exactly,
    copy_series,
    delivered,
    done_job,
    needs_peers,
    stale_at_pacs,
    store_datasets,
    storescu_background,
    synthetic_series,
    wait_for,
    write_config,
)

pytestmark = needs_peers

RECEIVE_PASSES = 20
PACS_DOWN_S = 30.0  # the issue: "the PACS down when the sCT is ready and back 30 s later"
CANNOT_UNDERSTAND = 0xC210
OUT_OF_RESOURCES = 0xA700


def hold_for(seconds: float, check: Callable[[], None]) -> None:
    """Call ``check`` (which asserts) every poll for ``seconds`` of wall time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(POLL_S)


def test_sigkill_while_receiving_then_the_modality_sends_again(
    pacs: OrthancServer, start_daemon: StartDaemon, coarse_mr: Series
) -> None:
    daemon = start_daemon(pacs_port=pacs.dicom_port)
    n = len(coarse_mr)
    # the file list over and over on one association: storescu is still sending when the
    # kill comes, however fast this machine is (re-sent instances only replace themselves)
    sending = storescu_background(daemon.port, coarse_mr.files * RECEIVE_PASSES)
    daemon.wait_for(
        lambda: daemon.catalog.instance_count() >= n // 4, "a quarter of the series received"
    )
    daemon.kill()
    _, stderr = sending.communicate(timeout=60)
    received = daemon.catalog.instance_count()

    assert sending.returncode != 0, "storescu finished before the kill: nothing was tested"
    assert n // 4 <= received <= n, stderr
    assert daemon.catalog.jobs() == []  # an unreleased series is not converted

    daemon.start()

    def marked_cut() -> bool:  # so the quiet timer alone will not send a half head
        return daemon.catalog.scalar(
            "SELECT association_aborted_at IS NOT NULL FROM series WHERE series_uid = ?",
            (coarse_mr.series_uid,),
        ) in (1, True)

    daemon.wait_for(marked_cut, "the cut series marked as aborted at start")
    resent = storescu(daemon.port, coarse_mr.files)  # as a modality does after a failure
    assert resent.returncode == 0, resent.stderr
    daemon.wait_delivered(pacs, coarse_mr)

    assert daemon.catalog.instance_count(coarse_mr.series_uid) == n
    assert len(daemon.catalog.jobs()) == 1
    assert_pacs_holds_exactly(pacs, daemon.catalog, [coarse_mr.series_uid], [n])


def test_sigkill_while_converting_requeues_the_job(
    pacs: OrthancServer, start_daemon: StartDaemon, coarse_mr: Series
) -> None:
    daemon = start_daemon(pacs_port=pacs.dicom_port)
    sent = storescu(daemon.port, coarse_mr.files)
    assert sent.returncode == 0, sent.stderr
    daemon.wait_for(
        lambda: daemon.catalog.job_states(coarse_mr.series_uid) == ["running"], "a running job"
    )
    daemon.kill()
    assert pacs.instances() == []  # killed before anything was sent

    daemon.start()
    daemon.wait_delivered(pacs, coarse_mr)

    job = done_job(daemon.catalog, coarse_mr.series_uid)
    assert job["attempts"] == 2  # claimed by the killed process, then by the new one
    assert "requeued" in job["last_error"]
    assert len(daemon.catalog.jobs()) == 1
    assert_pacs_holds_exactly(pacs, daemon.catalog, [coarse_mr.series_uid], [len(coarse_mr)])
    assert_pacs_content_is_the_latest(pacs, daemon.catalog, coarse_mr.series_uid)


def test_sigkill_while_sending_resumes_where_it_stopped(
    pacs: OrthancServer, start_daemon: StartDaemon, thin_mr: Series
) -> None:
    daemon = start_daemon(pacs_port=pacs.dicom_port)
    n = len(thin_mr)
    sent = storescu(daemon.port, thin_mr.files)
    assert sent.returncode == 0, sent.stderr

    def half_sent() -> bool:
        counts = daemon.catalog.send_counts()
        return counts.get("stored", 0) > 0 and counts.get("pending", 0) > 0

    daemon.wait_for(half_sent, "some sends stored and some pending")
    daemon.kill()
    (job,) = daemon.catalog.jobs(thin_mr.series_uid)
    before = {s["sop_instance_uid"]: s for s in daemon.catalog.sends(job["id"])}
    stored_before = {uid for uid, s in before.items() if s["status"] == "stored"}
    assert 0 < len(stored_before) < n

    daemon.start()
    daemon.wait_delivered(pacs, thin_mr)

    after = {s["sop_instance_uid"]: s for s in daemon.catalog.sends(job["id"])}
    assert after.keys() == before.keys()  # the same plan: the output was not computed again
    # resumed where it stopped: what was stored before the kill was not sent again
    assert {uid for uid in stored_before if after[uid]["attempts"] != 1} == set()
    assert_pacs_holds_exactly(pacs, daemon.catalog, [thin_mr.series_uid], [n])
    assert_pacs_content_is_the_latest(pacs, daemon.catalog, thin_mr.series_uid)


@pytest.mark.slow
def test_pacs_down_when_the_sct_is_ready_and_back_30_s_later(
    tmp_path: Path, start_daemon: StartDaemon, coarse_mr: Series
) -> None:
    pacs_port = free_port()  # nothing listens there yet
    daemon = start_daemon(
        pacs_port=pacs_port,
        sections={"sender": {"retry_initial_seconds": 2, "retry_max_seconds": 5}},
    )
    sent = storescu(daemon.port, coarse_mr.files)
    assert sent.returncode == 0, sent.stderr
    daemon.wait_for(
        lambda: daemon.catalog.job_states(coarse_mr.series_uid) == ["retry_wait"],
        "the first send to fail",
    )

    def waiting_not_failed() -> None:
        (job,) = daemon.catalog.jobs(coarse_mr.series_uid)
        assert job["state"] in ("retry_wait", "running", "sending"), job
        assert daemon.catalog.send_counts(job["id"]) == {"pending": len(coarse_mr)}

    hold_for(PACS_DOWN_S, waiting_not_failed)
    (job,) = daemon.catalog.jobs(coarse_mr.series_uid)
    assert job["attempts"] >= 3, "the daemon should have retried while the PACS was down"

    with OrthancOnPort(tmp_path / "orthanc", dicom_port=pacs_port) as pacs:
        daemon.wait_delivered(pacs, coarse_mr)
        assert_pacs_holds_exactly(pacs, daemon.catalog, [coarse_mr.series_uid], [len(coarse_mr)])
        daemon.stop()


def test_a_peer_not_on_the_allow_list_is_refused(
    pacs: OrthancServer, start_daemon: StartDaemon, coarse_mr: Series
) -> None:
    daemon = start_daemon(
        pacs_port=pacs.dicom_port, sections={"security": {"allowed_ae_titles": ["MODALITY"]}}
    )
    refused = storescu(daemon.port, coarse_mr.files, calling_ae="INTRUDER")
    assert refused.returncode != 0
    assert echoscu(daemon.port, calling_ae="INTRUDER").returncode != 0
    assert daemon.catalog.instance_count() == 0
    assert not list((daemon.storage / "archive" / "incoming").rglob("*.dcm"))

    accepted = storescu(daemon.port, coarse_mr.files, calling_ae="MODALITY")
    assert accepted.returncode == 0, accepted.stderr
    daemon.wait_delivered(pacs, coarse_mr)
    assert_pacs_holds_exactly(pacs, daemon.catalog, [coarse_mr.series_uid], [len(coarse_mr)])


def test_the_disk_reserve_refuses_new_data_and_the_daemon_keeps_running(
    tmp_path: Path, start_daemon: StartDaemon, coarse_mr: Series
) -> None:
    beyond_the_disk_mb = shutil.disk_usage(tmp_path).free // 2**20 + 1_000_000
    daemon = start_daemon(
        pacs_port=free_port(), sections={"storage": {"reserve_mb": beyond_the_disk_mb}}
    )
    refused = storescu(daemon.port, coarse_mr.files)
    assert refused.returncode != 0  # the modality knows: nothing was taken and then lost
    assert daemon.catalog.instance_count() == 0
    assert not list((daemon.storage / "archive" / "incoming").rglob("*.dcm"))
    assert "free disk under the reserve" in daemon.log_text()

    assert daemon.alive
    status = daemon.command("status")
    assert status.returncode == 0, status.stderr
    assert "jobs:" in status.stdout
    again = storescu(daemon.port, coarse_mr.files[:1])
    assert again.returncode != 0  # still refusing, still serving
    assert daemon.alive
    assert daemon.stop() == 0  # and it stops cleanly


class FakeDisk:
    """Free bytes of the archive's file system, as the test says."""

    def __init__(self, free: int) -> None:
        self.free = free


@pytest.fixture
def node_in_process(
    tmp_path: Path, pacs: OrthancServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Node, FakeDisk]]:
    """The daemon's :class:`Node` in this process (running in a thread) over a fake disk."""
    disk = FakeDisk(10**15)

    def free_bytes(archive: Archive) -> int:
        del archive
        return disk.free

    monkeypatch.setattr(Archive, "free_bytes", free_bytes)
    path = write_config(
        tmp_path, port=0, pacs_port=pacs.dicom_port, sections={"storage": {"reserve_mb": 1024}}
    )
    node = Node.open(load_config(path))
    stop = threading.Event()
    runner = threading.Thread(target=node.run, args=(stop,), name="node")
    runner.start()
    try:
        yield node, disk
    finally:
        stop.set()
        runner.join(timeout=120)
        node.close()


def _association(port: int, datasets: Sequence[Dataset]) -> Association:
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    context = build_context(datasets[0].SOPClassUID, [datasets[0].file_meta.TransferSyntaxUID])
    return ae.associate(LOCALHOST, port, contexts=[context], ae_title="BONECT")


def test_a_c_store_under_the_disk_reserve_gets_a700_and_the_node_keeps_going(
    tmp_path: Path,
    pacs: OrthancServer,
    node_in_process: tuple[Node, FakeDisk],
    coarse_mr: Series,
) -> None:
    node, disk = node_in_process
    datasets = [pydicom.dcmread(p) for p in coarse_mr.files]
    half = len(datasets) // 2
    # slices 0..half except one: a gap, so the part received cannot settle before the rest
    first = [ds for k, ds in enumerate(datasets[:half]) if k != half // 2]
    assoc = _association(node.server.port, datasets)
    assert assoc.is_established
    assert [int(assoc.send_c_store(ds).Status) for ds in first] == [0] * len(first)
    disk.free = 0  # the disk fills up in the middle of the association
    assert int(assoc.send_c_store(datasets[half]).Status) == OUT_OF_RESOURCES
    assoc.release()
    assert _association(node.server.port, datasets).is_rejected  # new ones refused

    disk.free = 10**15  # space is freed; the modality sends the whole series again
    assert store_datasets(node.server.port, datasets) == [0] * len(datasets)
    catalog = CatalogView(tmp_path / "var" / "catalog.sqlite3")
    wait_for(
        delivered(pacs, catalog, coarse_mr.series_uid, len(datasets)),
        "the sCT series at Orthanc",
        timeout=180,
    )
    assert catalog.instance_count() == len(datasets)
    assert len(catalog.jobs()) == 1
    assert_pacs_holds_exactly(pacs, catalog, [coarse_mr.series_uid], [len(datasets)])


@pytest.mark.skipif(not have("dciodvfy"), reason="needs dicom3tools (make test installs it)")
def test_a_reopened_series_replaces_its_earlier_sct_at_the_pacs(
    tmp_path: Path,
    pacs: OrthancServer,
    node_in_process: tuple[Node, FakeDisk],
    coarse_mr: Series,
) -> None:
    node, _ = node_in_process
    datasets = [pydicom.dcmread(p) for p in coarse_mr.files]
    n, half = len(datasets), len(datasets) // 2
    catalog = CatalogView(tmp_path / "var" / "catalog.sqlite3")
    # the first half, released: contiguous, so it settles early and is converted and sent
    assert store_datasets(node.server.port, datasets[:half]) == [0] * half
    wait_for(delivered(pacs, catalog, coarse_mr.series_uid, half), "the first sCT", timeout=180)
    (first,) = catalog.jobs()
    # the rest arrives: the series re-opens and is converted again, whole, as a new series
    rest = datasets[half:]
    assert store_datasets(node.server.port, rest) == [0] * len(rest)
    wait_for(delivered(pacs, catalog, coarse_mr.series_uid, n), "the second sCT", timeout=180)
    assert [(job["generation"], job["state"]) for job in catalog.jobs()] == [
        (1, "done"),
        (2, "done"),
    ]
    assert stale_at_pacs(pacs, catalog, coarse_mr.series_uid) == []
    (note,) = assert_pacs_holds_a_replacement(pacs, catalog, coarse_mr.series_uid, n)
    path = tmp_path / "rejection-note.dcm"
    note.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []

    second = done_job(catalog, coarse_mr.series_uid)
    by_uid = {}
    for series_id in synthetic_series(pacs):
        tags = pacs.series_tags(series_id)
        by_uid[tags["SeriesInstanceUID"]] = (int(tags["SeriesNumber"]), tags["SeriesDescription"])
    (old_number, old_text), (new_number, new_text) = (
        by_uid[first["output_series_uid"]],
        by_uid[second["output_series_uid"]],
    )
    assert new_number > old_number and "v2 replaces v1" in new_text
    assert "replaces" not in old_text
    assert len(pacs.studies()) == 1  # the note joined the MR's study


def _hostile(source: Path, **uids: str) -> Dataset:
    """A copy of ``source`` with a new SOP Instance UID and then ``uids`` set as given."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_bad_input_fails_alone_and_good_series_still_come_through(
    tmp_path: Path, pacs: OrthancServer, start_daemon: StartDaemon, coarse_mr: Series
) -> None:
    daemon = start_daemon(pacs_port=pacs.dicom_port, sections={"settle": {"quiet_seconds": 3}})
    n, mid = len(coarse_mr), len(coarse_mr) // 2
    next_position = pydicom.dcmread(coarse_mr.files[mid + 1]).ImagePositionPatient

    def halve_pixels(k: int, ds: Dataset) -> None:
        if k == mid:  # a corrupt instance: half its pixel data is missing
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    def twin_position(k: int, ds: Dataset) -> None:
        if k == mid:  # two slices at one position, and a gap where this one was
            ds.ImagePositionPatient = next_position

    bad = {
        "corrupt": copy_series(coarse_mr, tmp_path / "corrupt", edit=halve_pixels),
        "gap": copy_series(coarse_mr, tmp_path / "gap", keep=lambda k: k != mid),
        "twin": copy_series(coarse_mr, tmp_path / "twin", edit=twin_position),
    }
    outside_before = _files_outside(tmp_path, daemon)

    for series in (*bad.values(), coarse_mr):
        sent = storescu(daemon.port, series.files)
        assert sent.returncode == 0, sent.stderr

    # UIDs that would escape the storage dir, sent as datasets (DCMTK would not send them)
    reading = pydicom_config.settings.reading_validation_mode
    writing = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
    pydicom_config.settings.writing_validation_mode = pydicom_config.WARN
    try:
        with pytest.warns(UserWarning):
            hostile = [
                _hostile(coarse_mr.files[0], SOPInstanceUID="1.2.3/../../x"),
                _hostile(coarse_mr.files[1], SeriesInstanceUID="../../../../y"),
                _hostile(coarse_mr.files[2], StudyInstanceUID="1.2.3/../../../../../../z"),
            ]
            statuses = store_datasets(daemon.port, hostile)
    finally:
        pydicom_config.settings.reading_validation_mode = reading
        pydicom_config.settings.writing_validation_mode = writing
    assert statuses == [CANNOT_UNDERSTAND] * 3

    def all_settled() -> bool:
        states = [daemon.catalog.job_states(s.series_uid) for s in bad.values()]
        return (
            states == [["failed"]] * 3
            and delivered(pacs, daemon.catalog, coarse_mr.series_uid, n)()
        )

    daemon.wait_for(all_settled, "three failed jobs and the good sCT at Orthanc")

    status = daemon.command("status")
    assert status.returncode == 0, status.stderr
    reasons = {}
    for name, series in bad.items():
        (job,) = daemon.catalog.jobs(series.series_uid)
        reasons[name] = job["last_error"]
        assert reasons[name], f"{name}: failed without a reason"
        assert reasons[name] in status.stdout, f"{name}: reason not shown\n{status.stdout}"
    assert "pixel" in reasons["corrupt"].lower(), reasons
    assert "failed" in status.stdout

    hostile_uids = [str(ds.SOPInstanceUID) for ds in hostile]
    assert not daemon.catalog.rows(
        "SELECT 1 FROM instances WHERE sop_instance_uid IN (?, ?, ?)", hostile_uids
    )
    assert _files_outside(tmp_path, daemon) == outside_before
    archived = [p.relative_to(daemon.storage) for p in daemon.storage.rglob("*") if p.is_file()]
    assert not [p for p in archived if p.name.startswith(("x", "y", "z"))]
    assert daemon.alive
    assert_pacs_holds_exactly(pacs, daemon.catalog, [coarse_mr.series_uid], [n])


def _files_outside(tmp_path: Path, daemon: Daemon) -> set[Path]:
    """Files under the test's folder but outside the storage dir and Orthanc's own folder."""
    return {
        p
        for p in tmp_path.rglob("*")
        if p.is_file()
        and not p.is_relative_to(daemon.storage)
        and not p.is_relative_to(tmp_path / "orthanc")
        and p != daemon.log
    }
