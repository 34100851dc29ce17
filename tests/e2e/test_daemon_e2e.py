"""End to end with real peers: DCMTK storescu -> bonect-daemon (subprocess) -> Orthanc."""

from __future__ import annotations

import json
import os

import pydicom
import pytest

from bonect.phantom.cohort import WrittenPatient
from dicom_peers import OrthancServer, echoscu, have, storescu
from dicom_validation import dciodvfy_errors
from e2e.conftest import PEERS_MISSING, Series, StartDaemon, copy_series, synthetic_series

pytestmark = pytest.mark.skipif(
    PEERS_MISSING or not have("dciodvfy"),
    reason="needs Debian's dcmtk, orthanc and dicom3tools (make test installs them)",
)


def test_bone_mr_comes_back_as_one_sct_series_and_ct_is_kept(
    pacs: OrthancServer,
    start_daemon: StartDaemon,
    coarse_patient: WrittenPatient,
    coarse_mr: Series,
) -> None:
    shell = os.umask(0o022)  # as a shell's: the daemon (a child) inherits it
    try:
        daemon = start_daemon(pacs_port=pacs.dicom_port)
    finally:
        os.umask(shell)
    tmp = daemon.folder
    assert coarse_patient.ct_dicom is not None
    ct_files = sorted(coarse_patient.ct_dicom.glob("*.dcm"))
    t1 = copy_series(  # the MR relabelled as a T1 MPRAGE series: the rules must ignore it
        coarse_mr,
        tmp / "t1",
        SeriesDescription="T1 MPRAGE",
        ProtocolName="T1 MPRAGE",
        SequenceName="tfl3d1",
        SeriesNumber=5,
    )

    for files in (coarse_mr.files, t1.files, ct_files):
        sent = storescu(daemon.port, files)
        assert sent.returncode == 0, sent.stderr

    mr = pydicom.dcmread(coarse_mr.files[0], stop_before_pixels=True)
    daemon.wait_delivered(pacs, coarse_mr, timeout=240)

    (series_id,) = synthetic_series(pacs)
    tags = pacs.series_tags(series_id)
    assert tags["Modality"] == "CT"
    assert len(tags["Instances"]) == len(coarse_mr)  # one instance per MR slice
    study = pacs.get(f"/series/{series_id}/study")
    assert study["MainDicomTags"]["StudyInstanceUID"] == mr.StudyInstanceUID
    for n, instance_id in enumerate(tags["Instances"]):
        path = tmp / f"sct_{n:04d}.dcm"
        path.write_bytes(pacs.instance_file(instance_id))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.FrameOfReferenceUID == mr.FrameOfReferenceUID
        assert "DERIVED" in ds.ImageType
        assert dciodvfy_errors(path) == [], path
    # nothing else reached the PACS: no sCT of the T1, no echo of the CT
    assert len(pacs.series()) == 1

    roles = dict(
        daemon.catalog.rows("SELECT modality || ':' || series_description, role FROM series")
    )
    assert sorted(roles.values()) == ["convert", "ignore", "keep_ct"], roles

    status = daemon.command("status")
    assert status.returncode == 0, status.stderr
    assert "done 1" in status.stdout, status.stdout
    assert mr.PatientID not in daemon.log_text()  # no patient ID in the logs
    assert echoscu(daemon.port, called_ae="NOT_BONECT").returncode != 0  # refused

    assert daemon.stop() == 0  # SIGTERM: a clean stop
    # the audit trail: one record per security-relevant event, no patient name or ID
    trail = (daemon.storage / "audit" / "audit.jsonl").read_text()
    events = [json.loads(line) for line in trail.splitlines()]
    kinds = [e["Event"] for e in events]
    assert kinds[0] == "configuration_loaded"
    assert kinds.count("instances_received") == 3  # the MR, the T1, the CT
    assert "association_accepted" in kinds and "association_refused" in kinds
    (sent,) = [e for e in events if e["Event"] == "sct_sent"]
    assert sent["EventOutcomeIndicator"] == 0
    assert sent["ParticipantObjectIdentification"][1]["ParticipantObjectDetail"] == {
        "NumberOfInstances": len(coarse_mr)
    }
    (refused,) = [e for e in events if e["Event"] == "association_refused"]
    assert "called AE 'NOT_BONECT' is not ours" in refused["EventOutcomeDescription"]
    assert str(mr.PatientID) not in trail and str(mr.PatientName) not in trail
    # started from a shell with umask 022, still nothing the daemon wrote is readable by others
    written = [p for p in daemon.storage.rglob("*") if not p.is_symlink()]
    assert any(p.suffix == ".dcm" for p in written) and any("catalog" in p.name for p in written)
    readable = [p for p in written if p.stat().st_mode & 0o077]
    assert readable == [], readable[:5]
