"""Tests of the synthetic CT DICOM writer: valid, on the MR's grid, labelled, deterministic."""

from __future__ import annotations

import copy
from datetime import date, datetime, time
from pathlib import Path
from typing import Literal, TypedDict

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from bonect.converter.dicom_writer import synthetic_ct_datasets, write_synthetic_ct
from bonect.converter.series import ImageSeries, SourceImage
from bonect.converter.volume import Volume
from bonect.dicom.provenance import MANUFACTURER
from bonect.errors import ConversionError, SeriesError
from bonect.phantom.dicom import PatientInfo, StudyInfo, acquired_series_datasets
from dicom_validation import dciodvfy_errors

SHAPE = (4, 16, 12)
SPACING = (2.5, 0.9, 0.8)  # slice, row, column: anisotropic
NOW = datetime(2024, 5, 6, 7, 8, 9)
Stacking = Literal["dicom", "highdicom"]


class ModelArgs(TypedDict):
    model_name: str
    model_version: str
    method: str


MODEL = ModelArgs(model_name="light_unet", model_version="2024.1", method="unet")

# (row cosine, column cosine) of the test planes.
PLANES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "oblique": (
        (0.0, 0.9659258262890683, 0.25881904510252074),
        (0.0, 0.25881904510252074, -0.9659258262890683),
    ),
}


def plane_affine(plane: str, *, stacking: Stacking = "dicom") -> npt.NDArray[np.float64]:
    """A volume affine whose slices step along the row cosine x the column cosine ("dicom",
    as bonect's reader orders them) or along column x row ("highdicom", as its volumes do).
    """
    row, column = (np.array(v) for v in PLANES[plane])
    affine = np.eye(4)
    normal = np.cross(row, column) if stacking == "dicom" else np.cross(column, row)
    affine[:3, 0] = normal * SPACING[0]
    affine[:3, 1] = column * SPACING[1]
    affine[:3, 2] = row * SPACING[2]
    affine[:3, 3] = (-12.5, -30.25, 41.0)
    return affine


def mr_series(plane: str = "sagittal", *, stacking: Stacking = "dicom") -> ImageSeries:
    """An MR series as the reader would give it: built from phantom MR datasets."""
    rng = np.random.default_rng(0)
    affine = plane_affine(plane, stacking=stacking)
    volume = Volume(rng.uniform(0.0, 1.0, SHAPE).astype(np.float32), affine)
    datasets = acquired_series_datasets(
        volume,
        modality="MR",
        patient=PatientInfo("PHANTOM^P001", "P001", date(1970, 1, 2), "F"),
        study=StudyInfo(generate_uid(), date(2024, 5, 6), time(7, 0), "ACC1", "Head", "1"),
        series_number=3,
        series_description="Bone MR",
        frame_of_reference_uid=generate_uid(),
        series_uid=generate_uid(),
        mr_contrast="zte",
    )
    header = copy.deepcopy(datasets[0])
    del header.PixelData
    sources = tuple(SourceImage(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in datasets)
    return ImageSeries(volume, header, sources)


def sct_hu(shape: tuple[int, int, int] = SHAPE) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(1)
    return rng.uniform(-1000.0, 2500.0, shape).astype(np.float32)


def write(tmp_path: Path, source: ImageSeries) -> list[Dataset]:
    """Write an sCT of ``source`` (not for clinical use) and read the files back."""
    paths = write_synthetic_ct(
        sct_hu(), source, tmp_path / "sct", **MODEL, clinical_use=False, now=NOW
    ).paths
    return [pydicom.dcmread(p) for p in paths]


@pytest.mark.parametrize("plane", sorted(PLANES))
def test_every_written_instance_passes_dciodvfy(tmp_path: Path, plane: str) -> None:
    written = write_synthetic_ct(
        sct_hu(), mr_series(plane), tmp_path, **MODEL, clinical_use=False, now=NOW
    )
    paths = written.paths
    assert [p.name for p in paths] == [f"CT_{k:04d}.dcm" for k in range(1, SHAPE[0] + 1)]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert written.sop_instance_uids == tuple(h.SOPInstanceUID for h in headers)
    assert {written.series_uid} == {h.SeriesInstanceUID for h in headers}
    for path in paths:
        assert dciodvfy_errors(path) == [], path


@pytest.mark.parametrize("plane", sorted(PLANES))
def test_highdicom_reads_back_the_mr_grid_and_the_hu(tmp_path: Path, plane: str) -> None:
    source = mr_series(plane, stacking="highdicom")
    datasets = write(tmp_path, source)

    volume = hd.get_volume_from_series(datasets)

    np.testing.assert_allclose(volume.affine, source.volume.affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array, np.rint(sct_hu()))
    assert volume.frame_of_reference_uid == source.frame_of_reference_uid


@pytest.mark.parametrize("plane", sorted(PLANES))
def test_highdicom_reads_back_dicom_stacked_volumes_reversed(tmp_path: Path, plane: str) -> None:
    """highdicom stacks slices along column x row: the same grid, traversed backwards."""
    source = mr_series(plane)
    datasets = write(tmp_path, source)

    volume = hd.get_volume_from_series(datasets)

    n = SHAPE[0]
    expected = source.volume.affine.copy()
    expected[:3, 3] += (n - 1) * expected[:3, 0]
    expected[:3, 0] *= -1.0
    np.testing.assert_allclose(volume.affine, expected, atol=1e-4)
    np.testing.assert_array_equal(volume.array, np.rint(sct_hu())[::-1])


def test_slice_k_lies_where_the_mr_slice_k_lies(tmp_path: Path) -> None:
    source = mr_series("oblique")
    datasets = write(tmp_path, source)
    for k, ds in enumerate(datasets):
        expected = source.volume.affine @ np.array([k, 0.0, 0.0, 1.0])
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected[:3])
        assert float(ds.SliceThickness) == pytest.approx(SPACING[0])
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(SPACING[1:])
        assert ds.InstanceNumber == k + 1


def test_hu_are_rounded_clipped_int16_with_identity_rescale(tmp_path: Path) -> None:
    source = mr_series("axial")
    hu = np.full(SHAPE, 100.4)
    hu[0, 0, :3] = (-5000.0, 5000.0, -0.6)
    datasets = synthetic_ct_datasets(hu, source, **MODEL, clinical_use=True)
    ds = datasets[0]
    assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 1)
    assert (float(ds.RescaleIntercept), float(ds.RescaleSlope), ds.RescaleType) == (0, 1, "HU")
    assert ds.pixel_array.dtype == np.int16
    assert ds.pixel_array[0, :4].tolist() == [-1024, 3071, -1, 100]
    assert int(np.asarray(datasets[1].pixel_array).min()) == 100


def test_integer_hu_are_accepted(tmp_path: Path) -> None:
    source = mr_series("axial")
    hu = np.rint(sct_hu()).astype(np.int16)
    datasets = synthetic_ct_datasets(hu, source, **MODEL, clinical_use=True)
    np.testing.assert_array_equal(np.stack([d.pixel_array for d in datasets]), hu)


def test_same_input_and_model_give_the_same_uids(tmp_path: Path) -> None:
    source = mr_series()
    first = synthetic_ct_datasets(sct_hu(), source, **MODEL, clinical_use=False)
    again = synthetic_ct_datasets(sct_hu(), source, **MODEL, clinical_use=False)
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in again]
    assert first[0].SeriesInstanceUID == again[0].SeriesInstanceUID
    assert len({d.SOPInstanceUID for d in first}) == SHAPE[0]
    assert all(str(d.SOPInstanceUID).startswith("2.25.") for d in first)
    assert all(len(d.SOPInstanceUID) <= 64 and d.SOPInstanceUID.is_valid for d in first)


@pytest.mark.parametrize(
    "model",
    [
        ModelArgs(model_name="light_unet", model_version="2024.2", method="unet"),
        ModelArgs(model_name="vgg16_unet", model_version="2024.1", method="unet"),
        ModelArgs(model_name="light_unet", model_version="2024.1", method="classical"),
    ],
)
def test_another_model_gives_other_uids(model: ModelArgs) -> None:
    source = mr_series()
    base = synthetic_ct_datasets(sct_hu(), source, **MODEL, clinical_use=False)
    other = synthetic_ct_datasets(sct_hu(), source, **model, clinical_use=False)
    assert other[0].SeriesInstanceUID != base[0].SeriesInstanceUID
    assert not {d.SOPInstanceUID for d in other} & {d.SOPInstanceUID for d in base}


def test_another_source_series_gives_other_uids() -> None:
    a = synthetic_ct_datasets(sct_hu(), mr_series(), **MODEL, clinical_use=False)
    b = synthetic_ct_datasets(sct_hu(), mr_series(), **MODEL, clinical_use=False)
    assert a[0].SeriesInstanceUID != b[0].SeriesInstanceUID


def test_rewriting_gives_identical_files(tmp_path: Path) -> None:
    source = mr_series()
    first = write_synthetic_ct(
        sct_hu(), source, tmp_path / "a", **MODEL, clinical_use=False, now=NOW
    ).paths
    again = write_synthetic_ct(
        sct_hu(), source, tmp_path / "b", **MODEL, clinical_use=False, now=NOW
    ).paths
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert not list((tmp_path / "a").glob(".*"))  # no temporary files left


def test_same_patient_study_and_frame_of_reference_new_series(tmp_path: Path) -> None:
    source = mr_series()
    for ds in write(tmp_path, source):
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "StudyID",
            "AccessionNumber",
            "StudyDescription",
        ):
            assert ds[keyword].value == source.header[keyword].value, keyword
        assert ds.FrameOfReferenceUID == source.frame_of_reference_uid
        assert ds.SeriesInstanceUID != source.series_uid
        assert ds.Modality == "CT"
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.SeriesNumber == 9003  # 9000 + the MR's 3
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_series_number_can_be_chosen() -> None:
    ds = synthetic_ct_datasets(sct_hu(), mr_series(), **MODEL, clinical_use=True, series_number=42)
    assert ds[0].SeriesNumber == 42


def test_labelled_as_derived_synthetic_and_not_for_clinical_use(tmp_path: Path) -> None:
    for ds in write(tmp_path, mr_series("sagittal")):
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
        assert ds.SeriesDescription.startswith("Synthetic CT (bonect unet)")
        assert ds.SeriesDescription.endswith("NOT FOR CLINICAL USE")
        assert "NOT FOR CLINICAL USE" in ds.ImageComments
        assert "Synthetic CT" in ds.ImageComments
        assert "light_unet" in ds.DerivationDescription
        assert ds.Manufacturer == MANUFACTURER
        assert "light_unet 2024.1" in ds.SoftwareVersions
        assert ds.BurnedInAnnotation == "NO"
        bonect_item = ds.ContributingEquipmentSequence[-1]
        assert bonect_item.Manufacturer == MANUFACTURER
        assert bonect_item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert "light_unet 2024.1" in bonect_item.SoftwareVersions
        scanner = ds.ContributingEquipmentSequence[0]
        assert scanner.PurposeOfReferenceCodeSequence[0].CodeValue == "109101"
        assert list(ds.WindowCenter) == [500, 40]
        assert list(ds.WindowWidth) == [2000, 80]
        assert list(ds.WindowCenterWidthExplanation) == ["BONE", "BRAIN"]


def test_clinical_models_are_not_marked_not_for_clinical_use() -> None:
    ds = synthetic_ct_datasets(sct_hu(), mr_series("axial"), **MODEL, clinical_use=True)[0]
    assert ds.SeriesDescription == "Synthetic CT (bonect unet)"
    assert "NOT FOR CLINICAL USE" not in ds.ImageComments
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]


def test_a_long_method_name_keeps_the_warning_within_64_characters() -> None:
    args = ModelArgs(model_name="light_unet", model_version="2024.1", method="m" * 80)
    ds = synthetic_ct_datasets(sct_hu(), mr_series(), **args, clinical_use=False)[0]
    assert len(ds.SeriesDescription) == 64
    assert ds.SeriesDescription.endswith(" NOT FOR CLINICAL USE")


def test_each_instance_references_its_mr_image_and_the_mr_series(tmp_path: Path) -> None:
    source = mr_series()
    datasets = write(tmp_path, source)
    for ds, image in zip(datasets, source.sources, strict=True):
        (item,) = ds.SourceImageSequence
        assert item.ReferencedSOPInstanceUID == image.sop_instance_uid
        assert item.ReferencedSOPClassUID == image.sop_class_uid
        assert "ReferencedFrameNumber" not in item
        (series,) = ds.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == source.series_uid
        referenced = [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence]
        assert referenced == [image.sop_instance_uid]  # what this instance references
        (related,) = ds.RelatedSeriesSequence
        assert related.SeriesInstanceUID == source.series_uid
        assert related.StudyInstanceUID == source.header.StudyInstanceUID


def test_enhanced_mr_sources_are_referenced_by_frame(tmp_path: Path) -> None:
    plain = mr_series("axial")
    enhanced_uid = generate_uid()
    sources = tuple(
        SourceImage(EnhancedMRImageStorage, enhanced_uid, frame_number=k + 1)
        for k in range(SHAPE[0])
    )
    source = ImageSeries(plain.volume, plain.header, sources)
    paths = write_synthetic_ct(
        sct_hu(), source, tmp_path, **MODEL, clinical_use=False, now=NOW
    ).paths
    for k, path in enumerate(paths):
        assert dciodvfy_errors(path) == []
        ds = pydicom.dcmread(path)
        (item,) = ds.SourceImageSequence
        assert (item.ReferencedSOPInstanceUID, item.ReferencedFrameNumber) == (enhanced_uid, k + 1)
        assert item.ReferencedSOPClassUID == EnhancedMRImageStorage
        (series,) = ds.ReferencedSeriesSequence
        assert [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence] == [
            enhanced_uid
        ]


def test_a_minimal_header_still_gives_valid_objects(tmp_path: Path) -> None:
    plain = mr_series("coronal")
    header = Dataset()
    header.StudyInstanceUID = plain.header.StudyInstanceUID
    header.SeriesInstanceUID = plain.header.SeriesInstanceUID
    header.FrameOfReferenceUID = plain.header.FrameOfReferenceUID
    source = ImageSeries(plain.volume, header, plain.sources)
    paths = write_synthetic_ct(
        sct_hu(), source, tmp_path, **MODEL, clinical_use=False, now=NOW
    ).paths
    assert all(dciodvfy_errors(p) == [] for p in paths)
    ds = pydicom.dcmread(paths[0])
    assert ds.PatientName == "" and ds.PatientID == "" and ds.SeriesNumber is None
    assert len(ds.ContributingEquipmentSequence) == 1  # no scanner known: bonect only


def test_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        synthetic_ct_datasets(sct_hu((3, 16, 12)), mr_series(), **MODEL, clinical_use=False)


def test_non_finite_hu_are_a_conversion_error() -> None:
    hu = sct_hu()
    hu[1, 2, 3] = np.nan
    with pytest.raises(ConversionError):
        synthetic_ct_datasets(hu, mr_series(), **MODEL, clinical_use=False)


def test_a_source_without_frame_of_reference_is_refused() -> None:
    plain = mr_series()
    header = copy.deepcopy(plain.header)
    del header.FrameOfReferenceUID
    with pytest.raises(SeriesError) as info:
        synthetic_ct_datasets(
            sct_hu(), ImageSeries(plain.volume, header, plain.sources), **MODEL, clinical_use=False
        )
    assert info.value.series_uid == plain.series_uid
