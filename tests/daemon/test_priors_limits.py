"""C-GET of priors under the Storage SCP's limits, against real C-GET SCPs.

A C-GET's instances arrive on our own association, as C-STOREs to us: they get the SCP's
rules (:class:`bonect.daemon.incoming.DatasetGuard`). Orthanc serves a CT instance of 8 MB
with ``max_dataset_bytes`` at 1 MB: the association is aborted once the data set passes
2 MB, nothing is archived and no streamed file is left. A pynetdicom stand-in C-GET SCP cuts
its second instance short (an A-ABORT, or the connection dropped, mid data set): the streamed
file is removed and the series counts as cut by an aborted association.

pynetdicom streams data sets into ``$TMPDIR`` here (the daemon's ``<storage>/receiving``), as
the daemon's SCP makes it do for the whole process.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from bonect.catalog import Catalog, Role
from bonect.catalog import priors as store
from bonect.catalog.priors import PriorState, RetrievalState
from bonect.config import Config
from bonect.daemon.archive import Archive
from bonect.daemon.priors import run_priors_once
from bonect.daemon.receive import Receiver
from catalog.catalog_support import header
from daemon.scp_support import FakeDisk, RecordingSink
from dicom_peers import LOCALHOST, OrthancServer, have
from series_factory import make_mr_series, write_series

MB = 1024 * 1024
NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
PATIENT = "PAT-GET-LIMIT"
MR_STUDY = "1.2.826.0.1.3680043.8.498.31"
MR_SERIES = "1.2.826.0.1.3680043.8.498.310"
CT_STUDY = "1.2.826.0.1.3680043.8.498.32"
CT_DATE = "20260115"  # within [trainer] pair_window_days of the MR (20260301)


@pytest.fixture
def receiving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where pynetdicom streams received data sets (the daemon's ``<storage>/receiving``)."""
    folder = tmp_path / "receiving"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    # process-wide, as the daemon's Storage SCP sets it: C-GET data sets stream to files too
    monkeypatch.setattr(pynetdicom_config, "STORE_RECV_CHUNKED_DATASET", True)
    return folder


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    """A catalog holding the patient's settled bone MR (its prior search is due)."""
    opened = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    for k in range(3):
        opened.record_instance(
            dataclasses.replace(
                header(MR_SERIES, k, study_uid=MR_STUDY, patient_id=PATIENT),
                study_date="20260301",
            ),
            Path(f"/nowhere/{k}.dcm"),
            received_at=NOW,
        )
    record = opened.series(MR_SERIES)
    assert record is not None
    assert opened.settle_series(MR_SERIES, revision=record.revision, role=Role.CONVERT, now=NOW)
    yield opened
    opened.close()


@dataclasses.dataclass
class Node:
    receiver: Receiver
    sink: RecordingSink
    archive: Archive

    def archived(self) -> list[Path]:
        return [p for p in self.archive.incoming.rglob("*") if p.is_file()]


def node(tmp_path: Path, *, max_dataset_bytes: int) -> Node:
    archive = Archive.open(tmp_path / "storage")
    sink = RecordingSink()
    receiver = Receiver(
        archive=archive,
        sink=sink,
        free_bytes=FakeDisk().free_bytes,
        max_dataset_bytes=max_dataset_bytes,
        clock=lambda: NOW,
    )
    return Node(receiver, sink, archive)


def get_from(port: int) -> Config:
    source = {"name": "pacs", "ae_title": "PACS", "host": LOCALHOST, "port": port}
    return Config.model_validate({"sources": [{**source, "retrieve": "get"}]})


def ct_series(slices: int, size: int) -> list[Dataset]:
    """A CT series of the patient, ``size`` x ``size`` 16-bit pixels a slice."""
    datasets = make_mr_series(
        (slices, size, size),
        modality="CT",
        patient_id=PATIENT,
        series_description="Head 1.0",
        study_uid=CT_STUDY,
    )
    for ds in datasets:
        ds.StudyDate = ds.SeriesDate = CT_DATE
    return datasets


def pending_retrievals(catalog: Catalog) -> list[RetrievalState]:
    (task,) = store.tasks(catalog)
    return [row.state for row in store.retrievals(catalog, task.id)]


# -- Orthanc: an instance past twice the limit ----------------------------------------------------


class GetPacs(OrthancServer):
    """Orthanc that answers bonect's C-FIND and C-GET."""

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["DicomModalities"]["bonect"].update({"AllowFind": True, "AllowGet": True})
        return config

    def upload(self, path: Path) -> None:
        request = urllib.request.Request(
            f"{self.url}/instances", data=path.read_bytes(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


@pytest.mark.skipif(not have("Orthanc"), reason="needs Orthanc")
def test_a_c_get_instance_past_twice_the_limit_aborts_the_association(
    tmp_path: Path, receiving: Path, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    (big,) = write_series(ct_series(1, 2048), tmp_path / "ct")  # 8 MB
    target = node(tmp_path, max_dataset_bytes=1 * MB)
    with GetPacs(tmp_path / "orthanc", allowed_aets=("BONECT",)) as pacs:
        pacs.upload(big)
        started = time.monotonic()
        step = run_priors_once(catalog, get_from(pacs.dicom_port), NOW, receiver=target.receiver)
        took = time.monotonic() - started

    # not the DIMSE timeout (120 s): the C-GET waiting for a response is woken by the abort
    assert took < 30, f"the aborted C-GET took {took:.0f} s"

    assert step is not None and step.state is PriorState.WAITING, step  # retried later
    assert step.reason is not None
    assert "a data set passed 2 MB, twice storage.max_dataset_mb: association aborted" in (
        step.reason
    )
    assert target.sink.records == [] and target.archived() == []
    assert list(receiving.iterdir()) == []  # the data set cut short by the abort is removed
    assert pending_retrievals(catalog) == [RetrievalState.PENDING]
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("C-GET")]
    assert line == (
        "C-GET from pacs: a data set passed 2 MB, twice storage.max_dataset_mb: association aborted"
    )
    assert PATIENT not in caplog.text


# -- a stand-in C-GET SCP that cuts an instance short ---------------------------------------------


class CuttingGetScp:
    """A pynetdicom C-FIND/C-GET SCP serving one CT series; once it has sent ``cut_after``
    bytes of P-DATA on the C-GET association it sends an A-ABORT (``how="a-abort"``) or
    nothing (``"dropped"``) and shuts the connection down, whatever it was sending."""

    def __init__(self, instances: Sequence[Dataset], *, cut_after: int, how: str) -> None:
        self.instances = list(instances)
        self.cut_after = cut_after
        self.how = how
        self.sent = 0
        self.cut = threading.Event()
        ae = AE(ae_title="PACS")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_supported_context(
            CTImageStorage, ExplicitVRLittleEndian, scu_role=True, scp_role=True
        )
        self._ae = ae
        server = ae.start_server(
            (LOCALHOST, 0),
            block=False,
            evt_handlers=[
                (evt.EVT_C_FIND, self._on_find),
                (evt.EVT_C_GET, self._on_get),
                (evt.EVT_PDU_SENT, self._on_pdu_sent),
            ],
        )
        assert server is not None
        self.port = int(server.server_address[1])

    def close(self) -> None:
        self._ae.shutdown()

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        first = self.instances[0]
        answer = Dataset()
        answer.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
        answer.PatientID = PATIENT
        answer.StudyInstanceUID = CT_STUDY
        answer.StudyDate = CT_DATE
        answer.ModalitiesInStudy = "CT"
        if answer.QueryRetrieveLevel == "SERIES":
            answer.SeriesInstanceUID = first.SeriesInstanceUID
            answer.Modality = "CT"
            answer.SeriesDescription = first.SeriesDescription
            answer.NumberOfSeriesRelatedInstances = len(self.instances)
        yield 0xFF00, answer

    def _on_get(self, event: Event) -> Iterator[int | tuple[int, Dataset | None]]:
        yield len(self.instances)
        for ds in self.instances:
            yield 0xFF00, ds

    def _on_pdu_sent(self, event: Event) -> None:
        if not isinstance(event.pdu, P_DATA_TF) or self.cut.is_set():
            return
        self.sent += sum(
            len(item.presentation_data_value or b"")
            for item in event.pdu.presentation_data_value_items
        )
        if self.sent < self.cut_after:
            return
        self.cut.set()
        transport = event.assoc.dul.socket
        assert transport is not None and transport.socket is not None
        raw = transport.socket
        if self.how == "a-abort":  # A-ABORT PDU: service user, no reason
            raw.sendall(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
        raw.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("how", ["a-abort", "dropped"])
def test_a_c_get_cut_short_leaves_no_file_and_counts_as_aborted(
    how: str, tmp_path: Path, receiving: Path, catalog: Catalog
) -> None:
    small = ct_series(2, 16)[0]
    big = ct_series(1, 1024)[0]  # 2 MB
    big.SeriesInstanceUID, big.InstanceNumber = small.SeriesInstanceUID, 2
    scp = CuttingGetScp([small, big], cut_after=MB, how=how)  # mid-way through the 2 MB
    target = node(tmp_path, max_dataset_bytes=64 * MB)
    try:
        step = run_priors_once(catalog, get_from(scp.port), NOW, receiver=target.receiver)
    finally:
        scp.close()

    assert scp.cut.is_set()
    assert step is not None and step.state is PriorState.WAITING, step
    (stored,) = target.sink.records  # the first instance, whole
    assert stored.header.sop_instance_uid == small.SOPInstanceUID
    assert list(receiving.iterdir()) == []  # the second one's streamed file is removed
    assert target.sink.aborted == [stored.association_id]  # not settled as a complete series
    assert pending_retrievals(catalog) == [RetrievalState.PENDING]
