"""End to end with real peers: DCMTK storescu -> bonect-daemon (subprocess) -> Orthanc."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from bonect.phantom.cohort import WrittenPatient, write_patient
from bonect.phantom.generate import Acquisition, generate_case
from dicom_peers import OrthancServer, free_port, have, storescu
from dicom_validation import dciodvfy_errors

pytestmark = pytest.mark.skipif(
    not (have("storescu") and have("Orthanc") and have("dciodvfy")),
    reason="needs Debian's dcmtk, orthanc and dicom3tools (make test installs them)",
)

DAEMON = Path(sys.executable).parent / "bonect-daemon"


def _config(tmp: Path, *, port: int, pacs_port: int) -> Path:
    text = f"""
[node]
ae_title = "BONECT"
host = "127.0.0.1"
port = {port}

[storage]
dir = "var"
reserve_mb = 1

[catalog]
url = ""

[settle]
quiet_seconds = 600   # long on purpose: completion must come from release + geometry

[converter]
model = "auto"
planes = ["axial", "coronal", "sagittal"]
device = "cpu"

[metrics]
enabled = false

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
"""
    path = tmp / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _t1_copy(mr_dir: Path, out: Path) -> list[Path]:
    """The MR series relabelled as a T1 MPRAGE series: the rules must ignore it."""
    out.mkdir(parents=True)
    series_uid = generate_uid()
    paths = []
    for path in sorted(mr_dir.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "T1 MPRAGE"
        ds.ProtocolName = "T1 MPRAGE"
        ds.SequenceName = "tfl3d1"
        ds.SeriesNumber = 5
        paths.append(out / path.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> WrittenPatient:
    case = generate_case(
        41,
        0,
        acquisition=Acquisition("sagittal", (4.0, 3.0, 3.0)),
        ct_acquisition=Acquisition("axial", (4.0, 3.0, 3.0)),
    )
    return write_patient(case, 41, tmp_path_factory.mktemp("phantom"))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, OrthancServer, Path]]:
    with OrthancServer(tmp_path / "orthanc", allowed_aets=("BONECT",)) as pacs:
        port = free_port()
        config = _config(tmp_path, port=port, pacs_port=pacs.dicom_port)
        log = (tmp_path / "daemon.log").open("wb")
        process = subprocess.Popen(
            [str(DAEMON), "--config", str(config), "start"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            _wait_listening(port, process, tmp_path / "daemon.log")
            yield process, port, pacs, tmp_path
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60  # a bounded wait for an external process's start-up
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("bonect-daemon did not start:\n" + log.read_text(errors="replace"))


def _wait_for(predicate, what: str, log: Path, timeout: float = 240.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout  # polling external processes, bounded
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(
        f"timed out waiting for {what}:\n" + log.read_text(errors="replace")[-6000:]
    )


def test_bone_mr_comes_back_as_one_sct_series_and_ct_is_kept(daemon, patient) -> None:  # type: ignore[no-untyped-def]
    process, port, pacs, tmp = daemon
    log = tmp / "daemon.log"
    mr_files = sorted(patient.mr_dicom.glob("*.dcm"))
    assert patient.ct_dicom is not None
    ct_files = sorted(patient.ct_dicom.glob("*.dcm"))
    t1_files = _t1_copy(patient.mr_dicom, tmp / "t1")

    for files in (mr_files, t1_files, ct_files):
        sent = storescu(port, files)
        assert sent.returncode == 0, sent.stderr

    mr = pydicom.dcmread(mr_files[0], stop_before_pixels=True)

    def synthetic_series() -> list[str]:
        return [
            s
            for s in pacs.series()
            if "Synthetic" in pacs.series_tags(s).get("SeriesDescription", "")
        ]

    def all_stored() -> bool:
        found = synthetic_series()
        return len(found) == 1 and len(pacs.series_tags(found[0])["Instances"]) == len(mr_files)

    _wait_for(all_stored, "the sCT series at Orthanc", log)

    (series_id,) = synthetic_series()
    tags = pacs.series_tags(series_id)
    assert tags["Modality"] == "CT"
    assert len(tags["Instances"]) == len(mr_files)  # one instance per MR slice
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

    catalog = sqlite3.connect(tmp / "var" / "catalog.sqlite3")
    roles = dict(catalog.execute("SELECT modality || ':' || series_description, role FROM series"))
    catalog.close()
    assert sorted(roles.values()) == ["convert", "ignore", "keep_ct"], roles

    status = subprocess.run(
        [str(DAEMON), "--config", str(tmp / "config.toml"), "status"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "done 1" in status.stdout, status.stdout
    assert mr.PatientID not in log.read_text(errors="replace")  # no patient ID in the logs

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
