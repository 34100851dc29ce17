"""Test helpers of the daemon tests: an in-process PACS, kept apart from the fixtures.

Imported as ``daemon.node_support`` (``tests`` is on the path); the fixtures that start them
are in ``conftest.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from bonect.config import Destination
from bonect.daemon import dcmsend
from bonect.daemon.node import Node
from bonect.phantom.cohort import WrittenPatient

LOCALHOST = "127.0.0.1"


@dataclass
class Pacs:
    """An in-process Storage SCP that keeps every dataset it is sent."""

    ae_title: str
    server: ThreadedAssociationServer
    received: list[Dataset] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def on_store(self, event: Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self.lock:
            self.received.append(dataset)
        return 0x0000

    def of_class(self, sop_class_uid: str) -> list[Dataset]:
        """What it received of one SOP class, in arrival order."""
        with self.lock:
            return [d for d in self.received if d.SOPClassUID == sop_class_uid]

    def destination(self, name: str, **options: object) -> Destination:
        """A ``[[destinations]]`` entry for this PACS."""
        return Destination.model_validate(
            {"name": name, "ae_title": self.ae_title, "host": LOCALHOST, "port": self.port}
            | options
        )


MakePacs = Callable[..., Pacs]
OpenNode = Callable[..., Node]


def mr_files(patient: WrittenPatient) -> list[Path]:
    return sorted(patient.mr_dicom.glob("*.dcm"))


def assert_one_sct_series(pacs: Pacs, mr: list[Path]) -> None:
    source = dcmread(mr[0], stop_before_pixels=True)
    assert len(pacs.received) == len(mr)  # one sCT instance per MR slice, none twice
    assert len({d.SOPInstanceUID for d in pacs.received}) == len(mr)
    assert {d.Modality for d in pacs.received} == {"CT"}
    assert {d.SeriesInstanceUID for d in pacs.received} != {source.SeriesInstanceUID}
    assert len({d.SeriesInstanceUID for d in pacs.received}) == 1
    assert {d.StudyInstanceUID for d in pacs.received} == {source.StudyInstanceUID}
    assert {d.FrameOfReferenceUID for d in pacs.received} == {source.FrameOfReferenceUID}
    assert all("DERIVED" in d.ImageType for d in pacs.received)


def assert_no_patient_identity_logged(caplog: pytest.LogCaptureFixture, mr: list[Path]) -> None:
    source = dcmread(mr[0], stop_before_pixels=True)
    secrets = [str(source.PatientID), str(source.PatientName)]
    assert all(secrets), secrets
    for record in caplog.records:
        if record.levelno > logging.DEBUG:
            text = record.getMessage() + (record.exc_text or "")
            assert not any(s in text for s in secrets), text


def count_dcmsend_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of files of each ``dcmsend`` process started."""
    runs: list[int] = []
    run = dcmsend.run_dcmsend

    def counting(request: dcmsend.DcmsendRequest, paths: Sequence[Path]) -> dcmsend.DcmsendRun:
        runs.append(len(paths))
        return run(request, paths)

    monkeypatch.setattr(dcmsend, "run_dcmsend", counting)
    return runs
