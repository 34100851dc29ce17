"""Tests of the DICOM uncertainty object: valid, in the sCT's study and frame, referencing it."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ParametricMapStorage, SegmentationStorage

from bonect.catalog.tables import Role
from bonect.config_rules import RulesConfig
from bonect.converter.dicom_writer import synthetic_ct_datasets
from bonect.converter.uncertainty_object import (
    KINDS,
    UncertaintyKind,
    uncertainty_object,
    uncertainty_object_uids,
    write_uncertainty_object,
)
from bonect.dicom.header import read_header
from bonect.dicom.provenance import MANUFACTURER, dataset_is_own_sct
from bonect.rules import classify
from converter.test_dicom_writer import MODEL, NOW, SHAPE, mr_series, sct_hu
from dicom_validation import dciodvfy_errors

THRESHOLD = 100.0
SOP_CLASSES = {"segmentation": SegmentationStorage, "parametric_map": ParametricMapStorage}


def sct(plane: str = "sagittal") -> list[Dataset]:
    return synthetic_ct_datasets(sct_hu(), mr_series(plane), **MODEL, clinical_use=False, now=NOW)


def spread() -> npt.NDArray[np.float32]:
    """A spread in HU: 0 outside a "head" (the first two columns), up to 400 inside."""
    rng = np.random.default_rng(2)
    values = rng.uniform(0.0, 400.0, SHAPE).astype(np.float32)
    values[:, :, :2] = 0.0
    return values


@pytest.mark.parametrize("plane", ["axial", "oblique"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_object_passes_dciodvfy(tmp_path: Path, kind: UncertaintyKind, plane: str) -> None:
    written = write_uncertainty_object(
        kind, spread(), sct(plane), tmp_path, threshold_hu=THRESHOLD, now=NOW
    )
    assert (
        written.path.name == {"segmentation": "SEG_0001.dcm", "parametric_map": "PM_0001.dcm"}[kind]
    )
    assert dciodvfy_errors(written.path) == []


def test_an_empty_segmentation_passes_dciodvfy(tmp_path: Path) -> None:
    quiet = np.zeros(SHAPE, dtype=np.float32)  # the planes agree everywhere
    written = write_uncertainty_object(
        "segmentation", quiet, sct(), tmp_path, threshold_hu=THRESHOLD, now=NOW
    )
    assert dciodvfy_errors(written.path) == []


@pytest.mark.parametrize("kind", KINDS)
def test_the_object_joins_the_scts_study_and_frame_and_references_its_instances(
    tmp_path: Path, kind: UncertaintyKind
) -> None:
    images = sct()
    path = write_uncertainty_object(
        kind, spread(), images, tmp_path, threshold_hu=THRESHOLD, now=NOW
    ).path
    obj = pydicom.dcmread(path)
    first = images[0]
    assert obj.SOPClassUID == SOP_CLASSES[kind]
    assert obj.StudyInstanceUID == first.StudyInstanceUID
    assert obj.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert obj.PatientID == first.PatientID
    assert obj.SeriesInstanceUID not in {first.SeriesInstanceUID, images[0].SOPInstanceUID}
    assert (obj.SeriesInstanceUID, obj.SOPInstanceUID) == uncertainty_object_uids(
        first.SeriesInstanceUID, kind
    )
    (series,) = obj.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence] == [
        d.SOPInstanceUID for d in images
    ]
    derived = {
        item.ReferencedSOPInstanceUID
        for frame in obj.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for item in derivation.SourceImageSequence
    }
    assert derived <= {d.SOPInstanceUID for d in images}
    assert obj.Manufacturer == first.Manufacturer == MANUFACTURER
    assert list(obj.SoftwareVersions) == list(first.SoftwareVersions)
    assert obj.SeriesDescription.endswith("NOT FOR CLINICAL USE")  # as the sCT's


@pytest.mark.parametrize("kind", KINDS)
def test_the_object_coming_back_is_our_own_output(kind: UncertaintyKind) -> None:
    obj = uncertainty_object(kind, spread(), sct(), threshold_hu=THRESHOLD, now=NOW)
    assert dataset_is_own_sct(obj)
    assert classify(RulesConfig(), read_header(obj)) is Role.OUTPUT


def test_the_segmentation_holds_the_voxels_above_the_threshold() -> None:
    values, images = spread(), sct("axial")
    seg = hd.seg.Segmentation.from_dataset(
        uncertainty_object("segmentation", values, images, threshold_hu=THRESHOLD, now=NOW)
    )
    mask = seg.get_pixels_by_source_instance(
        [d.SOPInstanceUID for d in images], segment_numbers=[1]
    )[..., 0]
    np.testing.assert_array_equal(mask.astype(bool), values > THRESHOLD)
    assert seg.SegmentSequence[0].SegmentLabel == "spread > 100 HU"


def test_the_parametric_map_holds_the_spread_in_hu() -> None:
    values, images = spread(), sct("axial")
    pm = uncertainty_object("parametric_map", values, images, threshold_hu=THRESHOLD, now=NOW)
    uids = [d.SOPInstanceUID for d in images]
    frames = pm.PerFrameFunctionalGroupsSequence
    assert len(frames) == len(images)
    for pixels, frame in zip(pm.pixel_array, frames, strict=True):  # highdicom sorts frames
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        k = uids.index(source.ReferencedSOPInstanceUID)
        np.testing.assert_array_equal(pixels, np.rint(values[k]).astype(np.uint16))
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == [float(v) for v in images[k].ImagePositionPatient]
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]"


def test_the_same_sct_gives_the_same_object() -> None:
    images = sct()
    first = uncertainty_object("segmentation", spread(), images, threshold_hu=THRESHOLD, now=NOW)
    again = uncertainty_object("segmentation", spread(), images, threshold_hu=THRESHOLD)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (
        again.SeriesInstanceUID,
        again.SOPInstanceUID,
    )


def test_a_spread_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        uncertainty_object("parametric_map", spread()[:-1], sct(), threshold_hu=THRESHOLD, now=NOW)


def test_the_summary_is_appended_to_the_scts_image_comments() -> None:
    datasets = synthetic_ct_datasets(
        sct_hu(),
        mr_series(),
        **MODEL,
        clinical_use=True,
        now=NOW,
        uncertainty_summary="planes disagree by > 100 HU in 3.2 % of the head",
    )
    comments = {str(d.ImageComments) for d in datasets}
    (text,) = comments
    assert text.startswith("Synthetic CT computed from MR")
    assert text.endswith(" Uncertainty: planes disagree by > 100 HU in 3.2 % of the head.")
