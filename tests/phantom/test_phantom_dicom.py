"""Tests of the phantom's acquired MR and CT series: valid DICOM, on the grid, scanner-like."""

from __future__ import annotations

from datetime import date, time
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from bonect.converter.volume import Volume
from bonect.dicom.provenance import MANUFACTURER
from bonect.phantom.dicom import (
    PHANTOM_MANUFACTURER,
    PatientInfo,
    StudyInfo,
    acquired_series_datasets,
    write_acquired_series,
)
from dicom_validation import dciodvfy_errors

SHAPE = (4, 16, 12)
SPACING = (1.5, 0.9, 0.8)
PATIENT = PatientInfo("PHANTOM^P001", "P001", date(1970, 1, 2), "M", "BONECT-PHANTOM")
STUDY = StudyInfo(
    study_uid="1.2.826.0.1.3680043.8.498.1",
    study_date=date(2024, 5, 6),
    study_time=time(7, 8, 9),
    accession_number="ACC0001",
    description="Head and neck",
    study_id="1",
)
FRAME = "1.2.826.0.1.3680043.8.498.2"


def head_affine(plane: Literal["axial", "sagittal"]) -> npt.NDArray[np.float64]:
    """Right-handed (slice, row, column) affines, as highdicom builds them."""
    if plane == "axial":
        row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    else:
        row, column = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    affine = np.eye(4)
    affine[:3, 0] = np.cross(column, row) * SPACING[0]
    affine[:3, 1] = column * SPACING[1]
    affine[:3, 2] = row * SPACING[2]
    affine[:3, 3] = (-5.0, -7.0, 30.0)
    return affine


def mr_volume(plane: Literal["axial", "sagittal"] = "sagittal") -> Volume:
    rng = np.random.default_rng(3)
    return Volume(rng.uniform(0.0, 2.0, SHAPE).astype(np.float32), head_affine(plane))


def ct_volume(plane: Literal["axial", "sagittal"] = "axial") -> Volume:
    rng = np.random.default_rng(4)
    return Volume(rng.uniform(-1000.0, 2000.0, SHAPE).astype(np.float32), head_affine(plane))


def datasets(
    volume: Volume,
    modality: Literal["MR", "CT"],
    *,
    series_uid: str = "1.2.826.0.1.3680043.8.498.3",
    mr_contrast: str | None = None,
) -> list[Dataset]:
    return acquired_series_datasets(
        volume,
        modality=modality,
        patient=PATIENT,
        study=STUDY,
        series_number=2,
        series_description="Bone MR" if modality == "MR" else "CT head neck",
        frame_of_reference_uid=FRAME,
        series_uid=series_uid,
        mr_contrast=mr_contrast,
    )


@pytest.mark.parametrize("contrast", [None, "zte", "ute", "petra", "black_bone", "t1_vibe"])
def test_mr_files_pass_dciodvfy(tmp_path: Path, contrast: str | None) -> None:
    paths = write_acquired_series(
        mr_volume(),
        tmp_path,
        modality="MR",
        patient=PATIENT,
        study=STUDY,
        series_number=2,
        series_description="Bone MR",
        frame_of_reference_uid=FRAME,
        series_uid=generate_uid(),
        mr_contrast=contrast,
    )
    assert [p.name for p in paths] == [f"MR_{k:04d}.dcm" for k in range(1, SHAPE[0] + 1)]
    for path in paths:
        assert dciodvfy_errors(path) == [], path


@pytest.mark.parametrize("plane", ["axial", "sagittal"])
def test_ct_files_pass_dciodvfy(tmp_path: Path, plane: Literal["axial", "sagittal"]) -> None:
    paths = write_acquired_series(
        ct_volume(plane),
        tmp_path,
        modality="CT",
        patient=PATIENT,
        study=STUDY,
        series_number=5,
        series_description="CT head neck",
        frame_of_reference_uid=FRAME,
        series_uid=generate_uid(),
    )
    assert [p.name for p in paths] == [f"CT_{k:04d}.dcm" for k in range(1, SHAPE[0] + 1)]
    for path in paths:
        assert dciodvfy_errors(path) == [], path


@pytest.mark.parametrize("plane", ["axial", "sagittal"])
def test_mr_reads_back_on_the_volume_grid(plane: Literal["axial", "sagittal"]) -> None:
    volume = mr_volume(plane)
    read = hd.get_volume_from_series(datasets(volume, "MR"))
    np.testing.assert_allclose(read.affine, volume.affine, atol=1e-4)
    # 0 stays 0 and the maximum becomes 4095: a pure scale
    scale = 4095.0 / float(volume.array.max())
    expected = np.asarray(volume.array, dtype=np.float64) * scale
    np.testing.assert_allclose(read.array, expected, atol=0.5 + 1e-3)
    assert int(read.array.max()) == 4095


def test_ct_reads_back_in_hu_through_the_rescale() -> None:
    volume = ct_volume()
    ds = datasets(volume, "CT")
    assert (float(ds[0].RescaleIntercept), float(ds[0].RescaleSlope)) == (-1024.0, 1.0)
    assert ds[0].PixelRepresentation == 1
    read = hd.get_volume_from_series(ds)
    np.testing.assert_allclose(read.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(read.array, np.rint(volume.array))


def test_ct_hu_are_clipped_to_the_12_bit_range() -> None:
    volume = ct_volume().with_array(np.full(SHAPE, 5000.0, dtype=np.float32))
    volume.array[0, 0, 0] = -3000.0
    read = hd.get_volume_from_series(datasets(volume, "CT"))
    assert (read.array.min(), read.array.max()) == (-1024.0, 3071.0)


def test_instance_uids_are_deterministic_and_per_series() -> None:
    first = datasets(mr_volume(), "MR")
    again = datasets(mr_volume(), "MR")
    other = datasets(mr_volume(), "MR", series_uid="1.2.826.0.1.3680043.8.498.4")
    uids = [d.SOPInstanceUID for d in first]
    assert uids == [d.SOPInstanceUID for d in again]
    assert len(set(uids)) == SHAPE[0]
    assert not set(uids) & {d.SOPInstanceUID for d in other}


def test_patient_and_study_come_from_the_info_objects() -> None:
    for ds in datasets(mr_volume(), "MR"):
        assert ds.PatientName == "PHANTOM^P001"
        assert ds.PatientID == "P001"
        assert ds.IssuerOfPatientID == "BONECT-PHANTOM"
        assert ds.PatientBirthDate == "19700102"
        assert ds.PatientSex == "M"
        assert ds.StudyInstanceUID == STUDY.study_uid
        assert (ds.StudyDate, ds.StudyTime) == ("20240506", "070809")
        assert (ds.AccessionNumber, ds.StudyID) == ("ACC0001", "1")
        assert ds.StudyDescription == "Head and neck"
        assert ds.FrameOfReferenceUID == FRAME
        assert "SpecificCharacterSet" not in ds


def test_mr_and_ct_of_a_pair_share_study_and_frame_of_reference() -> None:
    mr = datasets(mr_volume(), "MR")[0]
    ct = datasets(ct_volume(), "CT", series_uid="1.2.826.0.1.3680043.8.498.5")[0]
    assert (mr.SOPClassUID, ct.SOPClassUID) == (MRImageStorage, CTImageStorage)
    assert mr.StudyInstanceUID == ct.StudyInstanceUID
    assert mr.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert mr.SeriesInstanceUID != ct.SeriesInstanceUID


@pytest.mark.parametrize(
    ("contrast", "sequence", "echo_time"),
    [
        (None, "ZTE", 0.016),
        ("zte", "ZTE", 0.016),
        ("UTE", "UTE", 0.07),
        ("petra", "PETRA", 0.07),
        ("black-bone", "GRE black bone", 4.2),
    ],
)
def test_mr_looks_like_a_3d_bone_mr_acquisition(
    contrast: str | None, sequence: str, echo_time: float
) -> None:
    ds = datasets(mr_volume(), "MR", mr_contrast=contrast)[0]
    assert list(ds.ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
    assert (ds.ScanningSequence, ds.MRAcquisitionType) == ("GR", "3D")
    assert ds.SequenceName == sequence
    assert float(ds.EchoTime) == pytest.approx(echo_time)
    assert float(ds.MagneticFieldStrength) == 3.0
    assert sequence in ds.ProtocolName
    assert ds.SeriesDescription == f"Bone MR ({sequence})"
    assert (ds.BitsStored, ds.PixelRepresentation) == (12, 0)
    assert "RescaleSlope" not in ds


def test_a_description_naming_the_contrast_is_kept() -> None:
    ds = acquired_series_datasets(
        mr_volume(),
        modality="MR",
        patient=PATIENT,
        study=STUDY,
        series_number=2,
        series_description="zte head neck",
        frame_of_reference_uid=FRAME,
        series_uid="1.2.826.0.1.3680043.8.498.3",
    )
    assert ds[0].SeriesDescription == "zte head neck"


def test_ct_looks_acquired_and_not_like_bonect_output() -> None:
    for ds in datasets(ct_volume("axial"), "CT"):
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert ds.Manufacturer == PHANTOM_MANUFACTURER != MANUFACTURER
        assert float(ds.KVP) == 120.0
        assert ds.RescaleType == "HU"
    sagittal = datasets(ct_volume("sagittal"), "CT")[0]
    assert list(sagittal.ImageType) == ["ORIGINAL", "PRIMARY", "OTHER"]


def test_non_ascii_names_declare_utf8(tmp_path: Path) -> None:
    patient = PatientInfo("PHANTÖM^Jürgen", "P002")
    paths = write_acquired_series(
        mr_volume(),
        tmp_path,
        modality="MR",
        patient=patient,
        study=STUDY,
        series_number=2,
        series_description="Bone MR",
        frame_of_reference_uid=FRAME,
        series_uid=generate_uid(),
    )
    ds = pydicom.dcmread(paths[0])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "PHANTÖM^Jürgen"
    assert dciodvfy_errors(paths[0]) == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="series_uid"):
        datasets(mr_volume(), "MR", series_uid="not-a-uid")
    with pytest.raises(ValueError, match="mr_contrast"):
        datasets(ct_volume(), "CT", mr_contrast="zte")
    with pytest.raises(ValueError, match="NaN"):
        datasets(mr_volume().with_array(np.full(SHAPE, np.nan, dtype=np.float32)), "MR")
