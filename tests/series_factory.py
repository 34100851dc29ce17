"""The synthetic DICOM factory of the test suite: small, valid MR (or other) series built in memory.

Every test that needs a DICOM series should get it from here rather than from real patient data.

* :func:`make_mr_series` builds a classic single-frame series (one dataset per slice), MR Image
  Storage by default or CT Image Storage with ``modality="CT"``.
* :func:`make_enhanced_mr` builds the same acquisition as one Enhanced MR Image Storage
  (multi-frame) dataset whose geometry lives in the functional group sequences.
* :func:`write_series` writes datasets to a folder as DICOM Part 10 files.
* :func:`synthetic_pixels` and :func:`orientation_cosines` give the values and geometry the
  builders use, so tests can compute what a reader should return without reading it back.

Geometry follows DICOM: slice ``k`` (``InstanceNumber`` ``k + 1``, frame ``k + 1``) lies at
``origin + k * spacing[0] * direction * normal`` where ``normal`` is the row cosine × the column
cosine of ``ImageOrientationPatient``; pixel ``(r, c)`` of a slice lies at
``position + r * spacing[1] * column_cosine + c * spacing[2] * row_cosine``.
Pixels are ``uint16`` from :func:`synthetic_pixels` (``seed`` picks them), stored raw; with
``rescale`` set, the real-world value is ``stored * slope + intercept``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

Shape = tuple[int, int, int]
Spacing = tuple[float, float, float]

#: ImageOrientationPatient (row cosine, then column cosine) of the three standard planes.
ORIENTATIONS: dict[str, tuple[float, float, float, float, float, float]] = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # normal +z (feet to head)
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # normal +y (anterior to posterior)
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # normal -x (left to right)
}

_DEFAULT_ORIGIN = (-12.5, -30.25, 41.0)
_SOP_CLASSES = {"MR": MRImageStorage, "CT": CTImageStorage}


def orientation_cosines(orientation: str | Sequence[float]) -> npt.NDArray[np.float64]:
    """Return ImageOrientationPatient (6 floats) for a plane name or six explicit cosines."""
    if isinstance(orientation, str):
        return np.array(ORIENTATIONS[orientation], dtype=np.float64)
    iop = np.asarray(orientation, dtype=np.float64)
    if iop.shape != (6,):
        raise ValueError(f"orientation needs 6 cosines, got {iop.shape}")
    return iop


def slice_normal(orientation: str | Sequence[float]) -> npt.NDArray[np.float64]:
    """The slice normal (row cosine × column cosine) of an orientation."""
    iop = orientation_cosines(orientation)
    return np.cross(iop[:3], iop[3:])


def synthetic_pixels(shape: Shape, seed: int = 0) -> npt.NDArray[np.uint16]:
    """The stored pixel values the builders use: uniform random 12-bit values, ``[slice, r, c]``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, size=shape, dtype=np.uint16)


def slice_positions(
    n_slices: int,
    slice_spacing: float,
    orientation: str | Sequence[float],
    *,
    origin: Sequence[float] = _DEFAULT_ORIGIN,
    direction: int = 1,
) -> npt.NDArray[np.float64]:
    """ImagePositionPatient of each slice, shape ``(n_slices, 3)``, in generation order."""
    step = direction * slice_spacing * slice_normal(orientation)
    k = np.arange(n_slices, dtype=np.float64)
    return np.asarray(origin, dtype=np.float64)[None, :] + k[:, None] * step[None, :]


def _ds(values: npt.ArrayLike) -> list[str]:
    """Decimal strings of at most 16 characters that round-trip the given floats well."""
    return [f"{float(v):.10g}" for v in np.asarray(values, dtype=np.float64).ravel()]


def _base_dataset(
    sop_class_uid: UID,
    modality: str,
    *,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    patient_name: str,
    patient_id: str,
    series_description: str,
    transfer_syntax: UID,
) -> Dataset:
    sop_instance_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = modality
    ds.Manufacturer = "bonect-test-factory"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "synthetic head and neck"
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def make_mr_series(
    shape: Shape = (8, 16, 16),
    spacing: Spacing = (2.0, 1.0, 1.0),
    orientation: str | Sequence[float] = "axial",
    *,
    modality: str = "MR",
    seed: int = 0,
    origin: Sequence[float] = _DEFAULT_ORIGIN,
    direction: int = 1,
    rescale: tuple[float, float] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_name: str = "Synthetic^Patient",
    patient_id: str = "SYN0001",
    series_description: str = "ZTE bone (synthetic)",
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> list[Dataset]:
    """Build a classic single-frame series, one dataset per slice, in acquisition order.

    Parameters
    ----------
    shape
        ``(n_slices, rows, columns)``.
    spacing
        ``(slice spacing, row spacing, column spacing)`` in mm; ``PixelSpacing`` is the last two
        and ``SliceThickness`` the first.
    orientation
        ``"axial"``, ``"coronal"``, ``"sagittal"`` (see :data:`ORIENTATIONS`) or six cosines
        for an oblique plane.
    modality
        ``"MR"`` (MR Image Storage) or ``"CT"`` (CT Image Storage).
    seed
        Selects the pixel values (:func:`synthetic_pixels`).
    origin
        ImagePositionPatient of the first slice.
    direction
        ``+1`` steps along the slice normal, ``-1`` against it (a descending stack).
    rescale
        ``(RescaleSlope, RescaleIntercept)`` to store; none by default (CT always gets some:
        ``(1, -1024)`` unless given).
    study_uid, series_uid, frame_of_reference_uid
        Fixed UIDs (e.g. to build two series of one study); new ones by default.
    transfer_syntax
        The file meta transfer syntax (uncompressed; use ``Dataset.compress`` for others).

    Returns
    -------
    list of Dataset
        ``len == n_slices``; dataset ``k`` holds ``synthetic_pixels(shape, seed)[k]``.
    """
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASSES)}, got {modality!r}")
    n_slices, rows, cols = shape
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    if rescale is None and modality == "CT":
        rescale = (1.0, -1024.0)
    iop = orientation_cosines(orientation)
    positions = slice_positions(
        n_slices, spacing[0], orientation, origin=origin, direction=direction
    )
    pixels = synthetic_pixels(shape, seed)

    datasets = []
    for k in range(n_slices):
        ds = _base_dataset(
            _SOP_CLASSES[modality],
            modality,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=frame_of_reference_uid,
            patient_name=patient_name,
            patient_id=patient_id,
            series_description=series_description,
            transfer_syntax=transfer_syntax,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = _ds(positions[k])
        ds.ImageOrientationPatient = _ds(iop)
        ds.PixelSpacing = _ds(spacing[1:])
        ds.SliceThickness = _ds(spacing[:1])[0]
        ds.SpacingBetweenSlices = _ds(spacing[:1])[0]
        ds.SliceLocation = _ds([float(positions[k] @ slice_normal(orientation))])[0]
        if modality == "MR":
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = "0.016"
            ds.RepetitionTime = "4.0"
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = "3"
        else:
            ds.KVP = "120"
        if rescale is not None:
            ds.RescaleSlope = _ds(rescale[:1])[0]
            ds.RescaleIntercept = _ds(rescale[1:])[0]
            if modality == "CT":
                ds.RescaleType = "HU"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelData = pixels[k].tobytes()
        datasets.append(ds)
    return datasets


def make_enhanced_mr(
    shape: Shape = (8, 16, 16),
    spacing: Spacing = (2.0, 1.0, 1.0),
    orientation: str | Sequence[float] = "axial",
    *,
    seed: int = 0,
    origin: Sequence[float] = _DEFAULT_ORIGIN,
    direction: int = 1,
    rescale: tuple[float, float] | None = None,
    per_frame_geometry: bool = False,
    frame_order: Sequence[int] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_name: str = "Synthetic^Patient",
    patient_id: str = "SYN0001",
    series_description: str = "ZTE bone (synthetic, enhanced)",
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> Dataset:
    """Build one Enhanced MR Image Storage dataset holding the series of :func:`make_mr_series`.

    The arguments shared with :func:`make_mr_series` mean the same, so both builders called with
    the same ``shape``, ``spacing``, ``orientation``, ``seed`` and ``origin`` describe the same
    volume. Plane positions are per frame (PlanePositionSequence); orientation, pixel measures
    and the pixel value transformation are shared unless ``per_frame_geometry`` is set.
    ``frame_order`` lists which generated slice each frame holds (a permutation of
    ``range(n_slices)``; identity by default), to test readers that must sort frames.
    """
    n_slices, rows, cols = shape
    order = list(range(n_slices)) if frame_order is None else list(frame_order)
    if sorted(order) != list(range(n_slices)):
        raise ValueError("frame_order must be a permutation of range(n_slices)")
    iop = orientation_cosines(orientation)
    positions = slice_positions(
        n_slices, spacing[0], orientation, origin=origin, direction=direction
    )
    pixels = synthetic_pixels(shape, seed)

    ds = _base_dataset(
        EnhancedMRImageStorage,
        "MR",
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        frame_of_reference_uid=frame_of_reference_uid or generate_uid(),
        patient_name=patient_name,
        patient_id=patient_id,
        series_description=series_description,
        transfer_syntax=transfer_syntax,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentQualification = "RESEARCH"
    ds.AcquisitionDateTime = "20240115101500"
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = "3"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.NumberOfFrames = n_slices
    ds.Rows = rows
    ds.Columns = cols

    def orientation_item() -> Dataset:
        item = Dataset()
        item.ImageOrientationPatient = _ds(iop)
        return item

    def measures_item() -> Dataset:
        item = Dataset()
        item.PixelSpacing = _ds(spacing[1:])
        item.SliceThickness = _ds(spacing[:1])[0]
        item.SpacingBetweenSlices = _ds(spacing[:1])[0]
        return item

    def transformation_item() -> Dataset:
        slope, intercept = rescale if rescale is not None else (1.0, 0.0)
        item = Dataset()
        item.RescaleSlope = _ds([slope])[0]
        item.RescaleIntercept = _ds([intercept])[0]
        item.RescaleType = "US"
        return item

    shared = Dataset()
    if not per_frame_geometry:
        shared.PlaneOrientationSequence = DicomSequence([orientation_item()])
        shared.PixelMeasuresSequence = DicomSequence([measures_item()])
        shared.PixelValueTransformationSequence = DicomSequence([transformation_item()])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    per_frame = []
    for k in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = _ds(positions[k])
        item.PlanePositionSequence = DicomSequence([position])
        content = Dataset()
        content.FrameAcquisitionNumber = 1
        content.InStackPositionNumber = k + 1
        content.StackID = "1"
        content.DimensionIndexValues = [1, k + 1]
        item.FrameContentSequence = DicomSequence([content])
        if per_frame_geometry:
            item.PlaneOrientationSequence = DicomSequence([orientation_item()])
            item.PixelMeasuresSequence = DicomSequence([measures_item()])
            item.PixelValueTransformationSequence = DicomSequence([transformation_item()])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.ascontiguousarray(pixels[order]).tobytes()
    return ds


def write_series(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write datasets as DICOM files ``IM00001.dcm``, ... under ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets, start=1):
        path = folder / f"IM{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
