"""A series converted again: a new sCT series, and the earlier one withdrawn (archive, PACS).

The node runs in-process over in-process PACS (``conftest.py``), driven with a fake clock. The
MR is a phantom series sent in two halves: the first half is contiguous and released, so it
settles and is converted at once (generation 1); the second half re-opens the series, which is
converted again whole (generation 2).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, KeyObjectSelectionDocumentStorage, SegmentationStorage

from bonect.catalog.jobs import JobState
from bonect.catalog.tables import SendStatus
from bonect.converter.sct_modules import sct_series_description, sct_series_number
from bonect.converter.sct_modules import synthetic_ct_uids as uids_of
from bonect.converter.uncertainty_object import uncertainty_object_uids
from bonect.daemon.node import Node
from bonect.daemon.rejection import rejection_note, rejection_note_uids, write_rejection_note
from bonect.daemon.sender import DestinationNode, send_files
from bonect.daemon.withdraw import uncertainty_objects
from bonect.phantom.cohort import WrittenPatient
from catalog.catalog_support import FakeClock
from daemon.node_support import LOCALHOST, MakePacs, OpenNode, Pacs
from dicom_peers import have
from dicom_validation import dciodvfy_errors

MODEL = {"method": "classical", "model_name": "classical", "model_version": "1"}


# -- the writer and the note ------------------------------------------------------------------


def test_each_generation_has_uids_of_its_own_and_the_first_keeps_the_old_ones() -> None:
    source = "1.2.826.0.1.3680043.8.498.7"
    first = uids_of(source, **MODEL, n_slices=3)
    assert uids_of(source, **MODEL, n_slices=3, generation=1) == first  # as before generations
    second = uids_of(source, **MODEL, n_slices=3, generation=2)
    assert uids_of(source, **MODEL, n_slices=3, generation=2) == second  # deterministic
    assert second[0] != first[0]
    assert not set(second[1]) & set(first[1])
    third = uids_of(source, **MODEL, n_slices=3, generation=3)
    assert len({first[0], second[0], third[0]}) == 3
    with pytest.raises(ValueError, match="generation"):
        uids_of(source, **MODEL, n_slices=3, generation=0)


def test_a_later_generation_has_a_higher_series_number_and_says_what_it_replaces() -> None:
    assert sct_series_number(5) == 9005
    assert [sct_series_number(5, g) for g in (2, 3)] == [19005, 29005]
    assert sct_series_number(None, 2) is None and sct_series_number(2**31, 1) is None
    first = sct_series_description("classical", clinical_use=True)
    assert first == "Synthetic CT (bonect classical)"
    for method in ("classical", "U-Net"):
        text = sct_series_description(method, clinical_use=False, generation=2, replaces=1)
        assert len(text) <= 64
        assert text.startswith("Synthetic CT") and text.endswith("NOT FOR CLINICAL USE")
        assert "v2 replaces v1" in text


def _source_header() -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = "Doe^Jane", "PAT-77"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260301", "0800", "A1", "1"
    ds.ReferringPhysicianName = ""
    return ds


def test_the_rejection_note_is_an_iocm_kos_that_references_every_instance(
    tmp_path: Path,
) -> None:
    superseded = "1.2.826.0.1.3680043.8.498.50"
    instances = [f"{superseded}.{k}" for k in range(1, 5)]
    note = rejection_note(_source_header(), superseded, instances, description="replaced")
    path = write_rejection_note(tmp_path / "note.dcm", note)
    ds = dcmread(path)
    assert ds.SOPClassUID == KeyObjectSelectionDocumentStorage and ds.Modality == "KO"
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == rejection_note_uids(superseded)
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001",
        "DCM",
        "Rejected for Quality Reasons",
    )
    assert (ds.StudyInstanceUID, ds.PatientID) == ("1.2.826.0.1.3680043.8.498.1", "PAT-77")
    assert referenced(ds) == {superseded: set(instances)}
    again = rejection_note(_source_header(), superseded, instances, description="replaced")
    assert again.SOPInstanceUID == ds.SOPInstanceUID  # sent again: the same object
    if have("dciodvfy"):
        assert dciodvfy_errors(path) == []


def test_the_rejection_note_also_rejects_the_uncertainty_object_that_was_sent(
    tmp_path: Path,
) -> None:
    superseded = "1.2.826.0.1.3680043.8.498.50"
    instances = [f"{superseded}.{k}" for k in range(1, 3)]
    (seg,) = [
        found
        for uid, found in uncertainty_objects(superseded).items()
        if uid == uncertainty_object_uids(superseded, "segmentation")[1]
    ]
    assert seg.sop_class_uid == SegmentationStorage
    note = rejection_note(
        _source_header(), superseded, instances, description="replaced", others=[seg]
    )
    path = write_rejection_note(tmp_path / "note.dcm", note)
    ds = dcmread(path)
    assert referenced(ds) == {superseded: set(instances), seg.series_uid: {seg.sop_instance_uid}}
    classes = {
        item.ReferencedSOPInstanceUID: item.ReferencedSOPClassUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert classes[seg.sop_instance_uid] == SegmentationStorage
    assert {classes[uid] for uid in instances} == {CTImageStorage}
    if have("dciodvfy"):
        assert dciodvfy_errors(path) == []


def referenced(note: Dataset) -> dict[str, set[str]]:
    """Series UID -> SOP Instance UIDs a KOS references in its evidence (and its content)."""
    found: dict[str, set[str]] = {}
    for study in note.CurrentRequestedProcedureEvidenceSequence:
        for series in study.ReferencedSeriesSequence:
            found.setdefault(series.SeriesInstanceUID, set()).update(
                item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence
            )
    in_content = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in note.ContentSequence
        if item.ValueType == "IMAGE"
    }
    assert in_content == set().union(*found.values())
    return found


# -- the node ---------------------------------------------------------------------------------


def send_and_step(node: Node, clock: FakeClock, files: list[Path]) -> None:
    """C-STORE ``files`` to the node on one association, then run one step of it."""
    node.wake.clear()
    report = send_files(
        files, DestinationNode("BONECT", LOCALHOST, node.server.port), calling_ae="MODALITY"
    )
    assert report.all_stored
    assert node.wake.wait(timeout=30.0)  # the release was recorded
    assert node.step(clock.advance(1)) is True


def sct(pacs: Pacs) -> dict[str, list[Dataset]]:
    """The sCT instances a PACS holds, by series UID."""
    series: dict[str, list[Dataset]] = {}
    for ds in pacs.of_class(CTImageStorage):
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    return series


@pytest.fixture
def mr(phantom_written: WrittenPatient) -> list[Path]:
    return sorted(phantom_written.mr_dicom.glob("*.dcm"))


def test_a_reopened_series_gets_a_new_sct_and_the_earlier_one_is_withdrawn(
    node: Node,
    pacs: Pacs,
    clock: FakeClock,
    mr: list[Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bonect")
    half = len(mr) // 2
    send_and_step(node, clock, mr[:half])
    (first,) = node.catalog.jobs()
    assert (first.state, first.generation) == (JobState.DONE, 1), first.last_error
    assert first.output_dir is not None and first.output_dir.is_dir()
    assert pacs.of_class(KeyObjectSelectionDocumentStorage) == []  # nothing to replace yet

    send_and_step(node, clock, mr[half:])
    second, old = node.catalog.jobs()
    assert (second.state, second.generation) == (JobState.DONE, 2), second.last_error
    assert old.id == first.id and old.state is JobState.DONE
    assert "withdraw" in second.timings

    by_series = sct(pacs)
    assert set(by_series) == {first.output_series_uid, second.output_series_uid}
    v1, v2 = by_series[str(first.output_series_uid)], by_series[str(second.output_series_uid)]
    assert (len(v1), len(v2)) == (half, len(mr))
    v1_uids = {d.SOPInstanceUID for d in v1}
    assert not v1_uids & {d.SOPInstanceUID for d in v2}  # no UID reused: nothing stale
    assert len(pacs.of_class(CTImageStorage)) == half + len(mr)  # nothing sent twice
    assert {int(d.SeriesNumber) for d in v2} == {int(v1[0].SeriesNumber) + 10000}
    assert "replaces" not in v1[0].SeriesDescription
    assert "v2 replaces v1" in v2[0].SeriesDescription

    (note,) = pacs.of_class(KeyObjectSelectionDocumentStorage)
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
    assert referenced(note) == {first.output_series_uid: v1_uids}
    source = dcmread(mr[0], stop_before_pixels=True)
    assert (note.StudyInstanceUID, note.PatientID) == (source.StudyInstanceUID, source.PatientID)
    if have("dciodvfy"):
        path = tmp_path / "note.dcm"
        note.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []

    assert not first.output_dir.exists()  # withdrawn from our archive
    assert second.output_dir is not None and second.output_dir.is_dir()
    (note_send,) = [s for s in node.catalog.sends(first) if s.sop_instance_uid not in v1_uids]
    assert (note_send.status, note_send.destination) == (SendStatus.STORED, "pacs")

    assert node.step(clock.advance(3600)) is False  # nothing left to do, nothing sent again
    assert len(pacs.received) == half + len(mr) + 1
    secrets = (str(source.PatientID), str(source.PatientName))
    for record in caplog.records:
        if record.levelno > logging.DEBUG:
            assert not any(s in record.getMessage() for s in secrets), record.getMessage()


def test_a_pacs_that_refuses_the_note_does_not_hold_the_job_and_one_can_opt_out(
    make_pacs: MakePacs, open_node: OpenNode, clock: FakeClock, mr: list[Path]
) -> None:
    plain = make_pacs("PLAIN", refuse=(KeyObjectSelectionDocumentStorage,))
    quiet = make_pacs("QUIET")
    node = open_node(
        [plain.destination("plain"), quiet.destination("quiet", rejection_notes=False)]
    )
    half = len(mr) // 2
    send_and_step(node, clock, mr[:half])
    send_and_step(node, clock, mr[half:])

    second, first = node.catalog.jobs()
    assert second.state is JobState.DONE, second.last_error  # the sCT is stored: done
    for pacs in (plain, quiet):
        assert pacs.of_class(KeyObjectSelectionDocumentStorage) == []
        assert sorted(len(v) for v in sct(pacs).values()) == [half, len(mr)]
    _, note_uid = rejection_note_uids(str(first.output_series_uid))
    notes = [s for s in node.catalog.sends(first) if s.sop_instance_uid == note_uid]
    assert [(s.destination, s.status) for s in notes] == [("plain", SendStatus.FAILED)]
    assert first.output_dir is not None and not first.output_dir.exists()
