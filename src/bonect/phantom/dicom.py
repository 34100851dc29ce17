"""The phantom's "acquired" DICOM series: MR Image and CT Image instances as a scanner writes them.

A phantom volume (a :class:`~bonect.converter.volume.Volume`, any orientation) becomes one
single-frame instance per slice, on exactly the volume's grid, with the Patient and Study given
by :class:`PatientInfo` and :class:`StudyInfo`:

* MR: MR Image Storage, ORIGINAL\\PRIMARY\\OTHER, unsigned 12-bit pixels (the float volume
  scaled so that 0 stays 0 and the maximum becomes 4095; MR signal has no unit), 3D
  gradient-echo bone-MR acquisition attributes chosen by the contrast (ZTE, UTE, PETRA,
  black-bone GRE).
* CT: CT Image Storage, ORIGINAL\\PRIMARY\\AXIAL, signed 16-bit pixels with RescaleIntercept -1024
  (stored value = HU + 1024, HU clipped to [-1024, 3071]), as many scanners do, so that readers
  must apply the rescale.

SOP Instance UIDs are derived from the series UID and the slice index: writing the same series
twice gives the same files. The Manufacturer is :data:`PHANTOM_MANUFACTURER`, not bonect's own
name, so that phantom series are never mistaken for bonect's synthetic CT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage

import bonect
from bonect.converter.volume import Volume
from bonect.dicom.files import file_meta_for, write_datasets
from bonect.dicom.modules import (
    general_equipment_module,
    hu_rescale_module,
    image_pixel_module,
    image_plane_module,
    slice_is_axial,
    sop_common_module,
    voi_lut_module,
)
from bonect.dicom.uids import deterministic_uid
from bonect.hounsfield import BONE_WINDOW, HU_MAX, HU_MIN

logger = logging.getLogger(__name__)

PHANTOM_MANUFACTURER = "Digital Phantom"
"""Manufacturer (0008,0070) of the phantom's acquired series."""

_MR_MAX = 4095
_CT_INTERCEPT = HU_MIN  # stored value = HU + 1024: 0..4095 for the whole HU range
_CT_WINDOWS = ((40, 400, "SOFT TISSUE"), (*BONE_WINDOW, "BONE"))


@dataclass(frozen=True)
class PatientInfo:
    """The Patient module of a phantom patient (synthetic identifiers only)."""

    name: str  # DICOM PN, e.g. "PHANTOM^P001"
    patient_id: str
    birth_date: date | None = None
    sex: Literal["F", "M", "O", ""] = ""
    issuer_of_patient_id: str = ""


@dataclass(frozen=True)
class StudyInfo:
    """The General Study module of a phantom study."""

    study_uid: str
    study_date: date
    study_time: time
    accession_number: str = ""
    description: str = ""
    study_id: str = ""


@dataclass(frozen=True)
class _MRProtocol:
    label: str  # shown in SequenceName, ProtocolName and SeriesDescription
    sequence_variant: tuple[str, ...]
    echo_time_ms: float
    repetition_time_ms: float
    flip_angle_deg: float


_ZTE = _MRProtocol("ZTE", ("NONE",), 0.016, 2.5, 1.0)
_UTE = _MRProtocol("UTE", ("SP",), 0.07, 4.0, 5.0)
_PETRA = _MRProtocol("PETRA", ("SP",), 0.07, 3.3, 6.0)
_BLACK_BONE = _MRProtocol("GRE black bone", ("SP",), 4.2, 8.6, 5.0)

_MR_PROTOCOLS: dict[str, _MRProtocol] = {
    "zte": _ZTE,
    "ute": _UTE,
    "petra": _PETRA,
    "black_bone": _BLACK_BONE,
    "blackbone": _BLACK_BONE,
    "gre": _BLACK_BONE,
    "gre_black_bone": _BLACK_BONE,
}


def _mr_protocol(contrast: str | None) -> _MRProtocol:
    """The acquisition parameters of a bone-MR contrast; unknown names get generic GRE values."""
    if contrast is None:
        return _ZTE
    key = contrast.strip().lower().replace("-", "_").replace(" ", "_")
    if key in _MR_PROTOCOLS:
        return _MR_PROTOCOLS[key]
    return _MRProtocol(contrast.strip()[:16] or "GRE", ("SP",), 2.0, 6.0, 5.0)


def _uid_ok(uid: str, what: str) -> None:
    if not uid or len(uid) > 64 or not all(part.isdigit() for part in uid.split(".")):
        raise ValueError(f"{what} is not a valid UID: {uid!r}")


def _patient_study(ds: Dataset, patient: PatientInfo, study: StudyInfo) -> None:
    texts = (patient.name, patient.patient_id, study.description, study.accession_number)
    if not all(text.isascii() for text in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    if patient.issuer_of_patient_id:
        ds.IssuerOfPatientID = patient.issuer_of_patient_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date.strftime("%Y%m%d")
    ds.StudyTime = study.study_time.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    if study.description:
        ds.StudyDescription = study.description


def _mr_pixels(array: npt.NDArray[np.generic]) -> npt.NDArray[np.uint16]:
    values = np.asarray(array, dtype=np.float64)
    low = min(0.0, float(values.min()))
    span = float(values.max()) - low
    scale = _MR_MAX / span if span > 0 else 0.0
    return np.clip(np.rint((values - low) * scale), 0, _MR_MAX).astype("<u2")


def _ct_pixels(array: npt.NDArray[np.generic]) -> npt.NDArray[np.int16]:
    hu = np.clip(np.rint(np.asarray(array, dtype=np.float64)), HU_MIN, HU_MAX)
    return (hu - _CT_INTERCEPT).astype("<i2")


def _mr_attributes(ds: Dataset, protocol: _MRProtocol) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = list(protocol.sequence_variant)
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.SequenceName = protocol.label[:16]
    ds.AngioFlag = "N"
    ds.RepetitionTime = f"{protocol.repetition_time_ms:g}"
    ds.EchoTime = f"{protocol.echo_time_ms:g}"
    ds.EchoTrainLength = 1
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "127.74"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "3"
    ds.FlipAngle = f"{protocol.flip_angle_deg:g}"
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = "500"
    ds.ReceiveCoilName = "Head Neck"
    ds.TransmitCoilName = "Body"
    ds.ProtocolName = f"{protocol.label} head-neck bone"


def _ct_attributes(ds: Dataset, *, axial: bool, columns: int, column_spacing: float) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if axial else "OTHER"]
    ds.KVP = "120"
    ds.XRayTubeCurrent = 200
    ds.ExposureTime = 1000
    ds.ConvolutionKernel = "STANDARD"
    ds.GantryDetectorTilt = "0"
    ds.RotationDirection = "CW"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = f"{columns * column_spacing:.1f}"
    ds.ProtocolName = "Head neck CT"


def acquired_series_datasets(
    volume: Volume,
    *,
    modality: Literal["MR", "CT"],
    patient: PatientInfo,
    study: StudyInfo,
    series_number: int,
    series_description: str,
    frame_of_reference_uid: str,
    series_uid: str,
    mr_contrast: str | None = None,
) -> list[Dataset]:
    """Build the single-frame instances a scanner would send for a phantom volume.

    Parameters
    ----------
    volume
        The image: MR signal (any scale, non-negative expected) or CT in HU; any orientation.
    modality
        ``"MR"`` (MR Image Storage) or ``"CT"`` (CT Image Storage).
    patient, study
        The Patient and Study modules.
    series_number, series_description
        SeriesNumber and SeriesDescription; for MR the contrast's label (e.g. "ZTE") is appended
        to the description in parentheses if the description does not mention it.
    frame_of_reference_uid, series_uid
        UIDs of the frame of reference (shared by an MR and CT pair registered to each other)
        and of the series; SOP Instance UIDs are derived from ``series_uid``.
    mr_contrast
        MR only: ``"zte"`` (default), ``"ute"``, ``"petra"`` or ``"black_bone"``; other names
        are written as generic 3D gradient echo with that SequenceName.

    Returns
    -------
    list[Dataset]
        One dataset per slice, InstanceNumber 1..n in slice order, each with ``file_meta``.
    """
    if modality not in ("MR", "CT"):
        raise ValueError(f"modality must be 'MR' or 'CT', got {modality!r}")
    if modality == "CT" and mr_contrast is not None:
        raise ValueError("mr_contrast applies to MR series only")
    _uid_ok(series_uid, "series_uid")
    _uid_ok(frame_of_reference_uid, "frame_of_reference_uid")
    _uid_ok(study.study_uid, "study.study_uid")
    if not np.all(np.isfinite(np.asarray(volume.array, dtype=np.float64))):
        raise ValueError("the volume holds NaN or infinite values")

    n_slices, rows, columns = volume.shape
    column_spacing = volume.spacing[2]
    axial = slice_is_axial(volume.affine)
    protocol = _mr_protocol(mr_contrast)
    description = series_description
    if modality == "MR" and protocol.label.lower() not in description.lower():
        description = f"{description} ({protocol.label})".strip()
    if modality == "MR":
        pixels: npt.NDArray[np.generic] = _mr_pixels(volume.array)
        sop_class = MRImageStorage
    else:
        pixels = _ct_pixels(volume.array)
        sop_class = CTImageStorage
    acquired = datetime.combine(study.study_date, study.study_time)
    day = study.study_date.strftime("%Y%m%d")
    clock = study.study_time.strftime("%H%M%S")

    datasets = []
    for k in range(n_slices):
        instance_uid = deterministic_uid("bonect-phantom", series_uid, "instance", str(k))
        ds = Dataset()
        ds.file_meta = file_meta_for(sop_class, instance_uid)
        _patient_study(ds, patient, study)
        ds.update(sop_common_module(sop_class, created=acquired))
        ds.SOPInstanceUID = instance_uid
        # General Series
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDate = day
        ds.SeriesTime = clock
        ds.SeriesDescription = description[:64]
        ds.BodyPartExamined = "HEADNECK"
        ds.PatientPosition = "HFS"
        # Frame of Reference
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.update(
            general_equipment_module(
                PHANTOM_MANUFACTURER,
                model_name=f"bonect {modality} phantom",
                software_versions=f"bonect {bonect.__version__}",
            )
        )
        # General Acquisition, General Image
        ds.AcquisitionNumber = 1
        ds.AcquisitionDate = day
        ds.AcquisitionTime = clock
        ds.ContentDate = day
        ds.ContentTime = clock
        ds.InstanceNumber = k + 1
        ds.BurnedInAnnotation = "NO"
        # Image Plane
        ds.update(image_plane_module(volume.affine, k))
        if modality == "MR":
            _mr_attributes(ds, protocol)
            ds.update(image_pixel_module(rows, columns, bits_stored=12, signed=False))
            ds.WindowCenter = "2048"
            ds.WindowWidth = "4096"
        else:
            _ct_attributes(ds, axial=axial, columns=columns, column_spacing=column_spacing)
            ds.update(image_pixel_module(rows, columns, bits_stored=16, signed=True))
            ds.update(hu_rescale_module(_CT_INTERCEPT))
            ds.update(voi_lut_module(_CT_WINDOWS))
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        datasets.append(ds)
    return datasets


def write_acquired_series(
    volume: Volume,
    out_dir: Path,
    *,
    modality: Literal["MR", "CT"],
    patient: PatientInfo,
    study: StudyInfo,
    series_number: int,
    series_description: str,
    frame_of_reference_uid: str,
    series_uid: str,
    mr_contrast: str | None = None,
) -> list[Path]:
    """Write a phantom series as ``out_dir/<MR|CT>_<InstanceNumber:04d>.dcm``.

    The arguments are those of :func:`acquired_series_datasets`; files are explicit VR little
    endian with file meta information.

    Returns
    -------
    list[Path]
        The files written, in slice order.
    """
    datasets = acquired_series_datasets(
        volume,
        modality=modality,
        patient=patient,
        study=study,
        series_number=series_number,
        series_description=series_description,
        frame_of_reference_uid=frame_of_reference_uid,
        series_uid=series_uid,
        mr_contrast=mr_contrast,
    )
    paths = write_datasets(datasets, out_dir, prefix=modality)
    logger.info("wrote phantom %s series %s (%d instances)", modality, series_uid, len(paths))
    return paths
