"""``[sender] return_to_sender``: the sCT also goes back to the node that sent the MR.

DCMTK ``storescu`` sends the phantom MR to the node in-process under a chosen calling AE title;
the destinations are in-process pynetdicom SCPs (``conftest.py``): a PACS that receives every
series, and a scanner console (``receives = "returns"``) whose AE title is the one storescu calls
with.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from bonect.catalog.jobs import JobState
from bonect.config import SenderConfig
from bonect.daemon.node import Node
from bonect.phantom.cohort import WrittenPatient
from catalog.catalog_support import FakeClock
from daemon.node_support import MakePacs, OpenNode, Pacs
from dicom_peers import have, storescu

pytestmark = pytest.mark.skipif(not have("storescu"), reason="DCMTK is not installed")

CONSOLE = "MRC40"


@pytest.fixture
def mr(phantom_written: WrittenPatient) -> list[Path]:
    return sorted(phantom_written.mr_dicom.glob("*.dcm"))


def another_series(files: list[Path], folder: Path) -> tuple[list[Path], str]:
    """A copy of ``files`` as a new series (new Series and SOP Instance UIDs)."""
    folder.mkdir()
    series_uid = generate_uid()
    paths = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / path.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths, series_uid


def store_and_step(node: Node, clock: FakeClock, files: list[Path], calling_ae: str) -> None:
    node.wake.clear()
    sent = storescu(node.server.port, files, calling_ae=calling_ae)
    assert sent.returncode == 0, sent.stderr
    assert node.wake.wait(timeout=30.0)  # the release was recorded
    assert node.step(clock.advance(1)) is True


def sct_series(pacs: Pacs) -> set[str]:
    return {str(d.SeriesInstanceUID) for d in pacs.received}


@pytest.fixture
def peers(make_pacs: MakePacs) -> tuple[Pacs, Pacs]:
    return make_pacs("PACS"), make_pacs(CONSOLE)


def test_the_sct_returns_to_the_destination_with_the_senders_ae_title(
    open_node: OpenNode,
    peers: tuple[Pacs, Pacs],
    clock: FakeClock,
    mr: list[Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pacs, console = peers
    node = open_node(
        [pacs.destination("pacs"), console.destination("console", receives="returns")],
        sender=SenderConfig(return_to_sender=True),
    )
    store_and_step(node, clock, mr, calling_ae=CONSOLE)
    (job,) = node.catalog.jobs()
    assert job.state is JobState.DONE, job.last_error
    assert len(pacs.received) == len(console.received) == len(mr)
    assert sct_series(pacs) == sct_series(console) == {job.output_series_uid}
    assert {s.destination for s in node.catalog.sends(job)} == {"pacs", "console"}

    # from a sender no destination has the AE title of: a warning, and the others still get it
    caplog.set_level(logging.INFO, logger="bonect")
    other, other_uid = another_series(mr, tmp_path / "other")
    store_and_step(node, clock, other, calling_ae="STRANGER")
    (job2,) = node.catalog.jobs(JobState.DONE)[:1]
    assert job2.series_uid == other_uid and job2.state is JobState.DONE
    assert len(pacs.received) == 2 * len(mr) and len(console.received) == len(mr)
    (warning,) = [
        r for r in caplog.records if r.levelno == logging.WARNING and "AE title" in r.getMessage()
    ]
    assert f"job {job2.id}" in warning.getMessage() and "'STRANGER'" in warning.getMessage()
    source = pydicom.dcmread(mr[0], stop_before_pixels=True)
    assert str(source.PatientID) not in warning.getMessage()


def test_without_return_to_sender_a_returns_only_destination_gets_nothing(
    open_node: OpenNode, peers: tuple[Pacs, Pacs], clock: FakeClock, mr: list[Path]
) -> None:
    pacs, console = peers
    node = open_node([pacs.destination("pacs"), console.destination("console", receives="returns")])
    store_and_step(node, clock, mr, calling_ae=CONSOLE)
    (job,) = node.catalog.jobs()
    assert job.state is JobState.DONE, job.last_error
    assert len(pacs.received) == len(mr) and console.received == []


def test_a_sender_that_receives_every_series_gets_it_once(
    open_node: OpenNode, peers: tuple[Pacs, Pacs], clock: FakeClock, mr: list[Path]
) -> None:
    pacs, _ = peers
    node = open_node([pacs.destination("pacs")], sender=SenderConfig(return_to_sender=True))
    store_and_step(node, clock, mr, calling_ae="PACS")  # the PACS auto-routed the MR to us
    (job,) = node.catalog.jobs()
    assert job.state is JobState.DONE, job.last_error
    assert len(pacs.received) == len(mr)  # not twice
