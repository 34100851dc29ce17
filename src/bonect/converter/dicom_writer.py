"""The synthetic CT DICOM series: CT Image Storage instances on the MR's grid, labelled as derived.

The series joins the source MR's study and frame of reference, takes one instance per MR slice
(same ImagePositionPatient, orientation and spacing), stores int16 HU with a trivial rescale,
references the MR series and images it was computed from, and says in-band that it is synthetic
(ImageType DERIVED\\SECONDARY, SeriesDescription, ImageComments, contributing equipment).

Series and SOP Instance UIDs are derived from the source series UID, the method, the model and
the generation: the same conversion again gives the very same objects (a retried send re-sends
them, never a new series); a later generation (the MR series grew) is another series.

The image-plane helpers (:func:`image_plane_module`, :func:`slice_is_axial`) and
:func:`save_dataset` (from :mod:`bonect.converter.dicom_files`, re-exported here) are shared
with the phantom's "acquired" series writer.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
)
from pydicom.valuerep import format_number_as_ds

import bonect
from bonect.converter.dicom_files import save_dataset as save_dataset
from bonect.converter.dicom_files import write_datasets as write_datasets
from bonect.converter.series import MRSeries, SourceImage
from bonect.errors import ConversionError, SeriesError

logger = logging.getLogger(__name__)

MANUFACTURER = "bonect"
"""Manufacturer (0008,0070) of every series bonect computes; the phantom uses another name."""

HU_MIN = -1024
HU_MAX = 3071

# (center, width, explanation): bone first, as the series exists for the bones.
WINDOW_PRESETS: tuple[tuple[int, int, str], ...] = ((500, 2000, "BONE"), (40, 80, "BRAIN"))

# Name-based (version 5) UUIDs of bonect's UIDs live in this namespace.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:bonect:dicom-uid")

_LO_MAX = 64  # Long String
_AXIAL_COSINE = 0.9  # |slice normal . z| above which a slice counts as axial (about 25 degrees)


def _keywords(text: str) -> tuple[str, ...]:
    """The DICOM keywords in ``text`` (split on whitespace), each checked in the dictionary."""
    keywords = tuple(text.split())
    unknown = [k for k in keywords if tag_for_keyword(k) is None]
    if unknown:
        raise ValueError(f"not DICOM keywords: {unknown}")
    return keywords


# Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial Study modules:
# copied from the source when present.
_PATIENT_STUDY_KEYWORDS = _keywords(
    """
    PatientName PatientID IssuerOfPatientID IssuerOfPatientIDQualifiersSequence TypeOfPatientID
    PatientBirthDate PatientBirthTime PatientSex OtherPatientIDsSequence OtherPatientNames
    EthnicGroup PatientComments PatientSpeciesDescription PatientSpeciesCodeSequence
    PatientBreedDescription PatientBreedCodeSequence BreedRegistrationSequence ResponsiblePerson
    ResponsiblePersonRole ResponsibleOrganization PatientIdentityRemoved DeidentificationMethod
    DeidentificationMethodCodeSequence QualityControlSubject ReferencedPatientSequence

    ClinicalTrialSponsorName ClinicalTrialProtocolID ClinicalTrialProtocolName
    ClinicalTrialSiteID ClinicalTrialSiteName ClinicalTrialSubjectID ClinicalTrialSubjectReadingID
    ClinicalTrialProtocolEthicsCommitteeName ClinicalTrialProtocolEthicsCommitteeApprovalNumber

    StudyInstanceUID StudyDate StudyTime ReferringPhysicianName
    ReferringPhysicianIdentificationSequence ConsultingPhysicianName
    ConsultingPhysicianIdentificationSequence StudyID AccessionNumber
    IssuerOfAccessionNumberSequence StudyDescription PhysiciansOfRecord
    PhysiciansOfRecordIdentificationSequence NameOfPhysiciansReadingStudy
    PhysiciansReadingStudyIdentificationSequence RequestingServiceCodeSequence
    ReferencedStudySequence ProcedureCodeSequence ReasonForPerformedProcedureCodeSequence

    AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence PatientAge PatientSize
    PatientWeight PatientSizeCodeSequence MedicalAlerts Allergies SmokingStatus PregnancyStatus
    LastMenstrualDate PatientState AdmissionID IssuerOfAdmissionIDSequence ServiceEpisodeID
    ServiceEpisodeDescription IssuerOfServiceEpisodeIDSequence PatientSexNeutered Occupation
    AdditionalPatientHistory

    ClinicalTrialTimePointID ClinicalTrialTimePointDescription ConsentForClinicalTrialUseSequence
    """
)

# Type 2 attributes of those modules: present, empty if the source lacks them.
_TYPE2_PATIENT_STUDY = _keywords(
    """
    PatientName PatientID PatientBirthDate PatientSex
    StudyDate StudyTime ReferringPhysicianName StudyID AccessionNumber
    """
)

# Attributes of the source's series and frame of reference that still hold for the sCT.
_SOURCE_SERIES_KEYWORDS: tuple[str, ...] = (
    "PositionReferenceIndicator",
    "PatientPosition",
    "BodyPartExamined",
    "Laterality",
    "ImageLaterality",
)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters, with -0 and tiny round-off shown as 0."""
    v = float(value)
    if abs(v) < 1e-9:
        v = 0.0
    return format_number_as_ds(v)


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def _check_affine(affine: npt.NDArray[np.float64]) -> None:
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError("the affine must be a finite 4x4 matrix")
    if np.any(np.linalg.norm(affine[:3, :3], axis=0) <= 0.0):
        raise ValueError("the affine has a zero-length axis")


def image_plane_module(affine: npt.NDArray[np.float64], index: int) -> Dataset:
    """The Image Plane module of slice ``index`` of a volume with this affine.

    Parameters
    ----------
    affine
        A :class:`bonect.converter.volume.Volume` affine (index ``(slice, row, column, 1)`` to
        LPS millimetres).
    index
        The slice, 0-based.

    Returns
    -------
    Dataset
        PixelSpacing, ImageOrientationPatient, ImagePositionPatient (``affine @ (index,0,0,1)``),
        SliceThickness and SpacingBetweenSlices (both the slice spacing) and SliceLocation
        (the position along the slice normal).
    """
    _check_affine(affine)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    row_cosine = affine[:3, 2] / norms[2]
    column_cosine = affine[:3, 1] / norms[1]
    position = affine[:3, 3] + index * affine[:3, 0]
    normal = np.cross(row_cosine, column_cosine)
    plane = Dataset()
    plane.PixelSpacing = [_ds(norms[1]), _ds(norms[2])]
    plane.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *column_cosine)]
    plane.ImagePositionPatient = [_ds(v) for v in position]
    plane.SliceThickness = _ds(norms[0])
    plane.SpacingBetweenSlices = _ds(norms[0])
    plane.SliceLocation = _ds(float(np.dot(position, normal)))
    return plane


def slice_is_axial(affine: npt.NDArray[np.float64]) -> bool:
    """Whether slices of a volume with this affine are axial (normal within ~25° of z)."""
    _check_affine(affine)
    row = affine[:3, 2]
    column = affine[:3, 1]
    normal = np.cross(row, column)
    normal = normal / np.linalg.norm(normal)
    return bool(abs(normal[2]) >= _AXIAL_COSINE)


def file_meta_for(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File meta information for an explicit VR little endian file of this instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"BONECT_{bonect.__version__}"[:16]
    return meta


def copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient and Study modules (and the character set) from ``source`` to ``target``.

    Type 2 attributes missing from ``source`` are added empty.
    """
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = copy.deepcopy(source.SpecificCharacterSet)
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in target:
            setattr(target, keyword, "")


def deterministic_uid(*parts: str) -> str:
    """A UID in the 2.25 form from a name-based UUID of ``parts``: same parts, same UID.

    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores ``entropy_srcs`` and
    returns a random UUID, so it cannot be used for this.)
    """
    name = json.dumps(list(parts), separators=(",", ":"))
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def synthetic_ct_uids(
    source_series_uid: str,
    *,
    method: str,
    model_name: str,
    model_version: str,
    n_slices: int,
    generation: int = 1,
) -> tuple[str, list[str]]:
    """The deterministic Series Instance UID and SOP Instance UIDs of a synthetic CT.

    Parameters
    ----------
    source_series_uid
        SeriesInstanceUID of the MR series converted.
    method, model_name, model_version
        What computed the sCT: the same source with any of them different gives other UIDs.
    n_slices
        Number of instances.
    generation
        1 for the first conversion of the series (as before generations), 2+ for later ones.

    Returns
    -------
    tuple[str, list[str]]
        The series UID and one SOP Instance UID per slice (see :func:`deterministic_uid`).
    """
    if generation < 1:
        raise ValueError(f"generation counts from 1, got {generation}")
    key: tuple[str, ...] = ("bonect-sct", source_series_uid, method, model_name, model_version)
    if generation > 1:
        key = (*key, f"generation {generation}")
    series_uid = deterministic_uid(*key, "series")
    instance_uids = [deterministic_uid(*key, "instance", str(k)) for k in range(n_slices)]
    return series_uid, instance_uids


def sct_series_number(source_series_number: int | None, generation: int = 1) -> int | None:
    """9000 + the MR's SeriesNumber, + 10000 per later generation; None outside the IS range."""
    if source_series_number is None:
        return None
    number = 9000 + source_series_number + 10000 * (generation - 1)
    return number if 0 <= number < 2**31 else None


def _series_description(
    method: str, *, clinical_use: bool, generation: int = 1, replaces: int | None = None
) -> str:
    suffix = "" if clinical_use else " NOT FOR CLINICAL USE"
    version = "" if generation == 1 else f" v{generation}"
    if replaces is not None:
        version += f" replaces v{replaces}"
    base = f"Synthetic CT (bonect {method})"
    if len(base + version + suffix) > _LO_MAX:
        base = f"Synthetic CT ({method})"
    return (base + version)[: _LO_MAX - len(suffix)] + suffix


def _software_versions(model_name: str, model_version: str) -> list[str]:
    return [f"bonect {bonect.__version__}", f"{model_name} {model_version}"[:_LO_MAX]]


def _contributing_equipment(
    header: Dataset, *, model_name: str, model_version: str, now: datetime
) -> DicomSequence:
    items = []
    if header.get("Manufacturer"):
        scanner = Dataset()
        scanner.PurposeOfReferenceCodeSequence = [_code("109101", "DCM", "Acquisition Equipment")]
        scanner.Manufacturer = header.Manufacturer
        for keyword in ("InstitutionName", "ManufacturerModelName", "SoftwareVersions"):
            if header.get(keyword):
                scanner[keyword] = copy.deepcopy(header[keyword])
        items.append(scanner)
    bonect_item = Dataset()
    bonect_item.PurposeOfReferenceCodeSequence = [_code("109102", "DCM", "Processing Equipment")]
    bonect_item.Manufacturer = MANUFACTURER
    bonect_item.ManufacturerModelName = "bonect synthetic CT"
    bonect_item.SoftwareVersions = _software_versions(model_name, model_version)
    bonect_item.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    bonect_item.ContributionDescription = "Synthetic CT computed from bone MR"
    items.append(bonect_item)
    return DicomSequence(items)


def _source_image_item(image: SourceImage) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = image.sop_class_uid
    item.ReferencedSOPInstanceUID = image.sop_instance_uid
    if image.frame_number is not None:
        item.ReferencedFrameNumber = image.frame_number
    item.PurposeOfReferenceCodeSequence = [
        _code("121322", "DCM", "Source image for image processing operation")
    ]
    return item


def _referenced_series(source: MRSeries, image: SourceImage) -> DicomSequence:
    """The Common Instance Reference module's Referenced Series Sequence.

    It lists the instances this instance references (its source MR image), in their series;
    listing every MR instance in every sCT instance made writing quadratic in the slice count.
    """
    series = Dataset()
    series.SeriesInstanceUID = source.series_uid
    item = Dataset()
    item.ReferencedSOPClassUID = image.sop_class_uid
    item.ReferencedSOPInstanceUID = image.sop_instance_uid
    series.ReferencedInstanceSequence = [item]
    return DicomSequence([series])


def _related_series(source: MRSeries, study_uid: str) -> DicomSequence:
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.SeriesInstanceUID = source.series_uid
    item.PurposeOfReferenceCodeSequence = [
        _code("121322", "DCM", "Source image for image processing operation")
    ]
    return DicomSequence([item])


def _validate(hu: npt.NDArray[np.generic], source: MRSeries) -> None:
    shape = source.volume.shape
    if hu.shape != shape:
        raise ValueError(f"HU array shape {hu.shape} differs from the MR volume's {shape}")
    if len(source.sources) != shape[0]:
        raise ValueError(f"{len(source.sources)} source images for {shape[0]} slices")
    if not (np.issubdtype(hu.dtype, np.floating) or np.issubdtype(hu.dtype, np.integer)):
        raise ValueError(f"HU array must be numeric, got {hu.dtype}")
    if not np.all(np.isfinite(hu)):
        raise ConversionError(f"synthetic CT of series {source.series_uid} has non-finite values")
    if "StudyInstanceUID" not in source.header or not source.frame_of_reference_uid:
        raise SeriesError(
            "the MR header lacks StudyInstanceUID or FrameOfReferenceUID",
            series_uid=source.series_uid,
        )


def _hu_to_int16(hu: npt.NDArray[np.generic]) -> npt.NDArray[np.int16]:
    values = np.asarray(hu, dtype=np.float64)
    return np.ascontiguousarray(np.clip(np.rint(values), HU_MIN, HU_MAX).astype("<i2"))


def synthetic_ct_datasets(
    hu: npt.NDArray[np.generic],
    source: MRSeries,
    *,
    model_name: str,
    model_version: str,
    method: str,
    clinical_use: bool,
    series_number: int | None = None,
    now: datetime | None = None,
    generation: int = 1,
    replaces: int | None = None,
) -> list[Dataset]:
    """Build the CT Image Storage instances of a synthetic CT on the grid of ``source``.

    Parameters
    ----------
    hu
        Hounsfield units, shape ``source.volume.shape`` (float or integer); rounded and
        clipped to [-1024, 3071].
    source
        The MR series the sCT was computed from: its study, frame of reference, grid and images.
    model_name, model_version, method
        What computed the sCT (e.g. ``"light_unet"``, ``"2024.1"``, ``"unet"``); recorded in the
        headers and part of the deterministic UIDs.
    clinical_use
        False for models not validated for clinical use: the SeriesDescription then ends with
        "NOT FOR CLINICAL USE" and ImageComments says so.
    series_number
        SeriesNumber of the new series; default :func:`sct_series_number` of the MR's
        SeriesNumber and ``generation`` (empty if the MR has none).
    now
        Content, series and instance creation date/time; default the current local time.
    generation, replaces
        Which conversion of this MR series this is (1: the first; part of the UIDs), and the
        one it replaces at the PACS if any (SeriesDescription "v2 replaces v1", ImageComments).

    Returns
    -------
    list[Dataset]
        One dataset per slice, in slice order, InstanceNumber 1..n, each with ``file_meta``.

    Raises
    ------
    ValueError
        If ``hu`` does not fit the source (shape, one source image per slice).
    ConversionError
        If ``hu`` holds NaN or infinite values.
    SeriesError
        If the source header lacks a study or frame of reference UID.
    """
    _validate(hu, source)
    moment = now if now is not None else datetime.now()
    header = source.header
    affine = source.volume.affine
    n_slices, rows, columns = source.volume.shape
    series_uid, instance_uids = synthetic_ct_uids(
        source.series_uid,
        method=method,
        model_name=model_name,
        model_version=model_version,
        n_slices=n_slices,
        generation=generation,
    )
    if series_number is None and header.get("SeriesNumber") not in (None, ""):
        series_number = sct_series_number(int(header.SeriesNumber), generation)
    study_uid = str(header.StudyInstanceUID)
    description = _series_description(
        method, clinical_use=clinical_use, generation=generation, replaces=replaces
    )
    derivation = (
        f"Synthetic CT predicted from bone MR series {source.series_uid} by bonect "
        f"{bonect.__version__}, method {method}, model {model_name} {model_version}"
    )[:1024]
    comments = (
        "Synthetic CT computed from MR, not acquired with X-rays. "
        + ("" if clinical_use else "NOT FOR CLINICAL USE: research model, not validated. ")
        + f"Method {method}, model {model_name} {model_version}."
        + ("" if replaces is None else f" Version {generation}: replaces version {replaces}.")
    )

    series = Dataset()  # what all instances share
    copy_patient_and_study(header, series)
    for keyword in _SOURCE_SERIES_KEYWORDS:
        if keyword in header:
            series[keyword] = copy.deepcopy(header[keyword])
    # SOP Common
    series.SOPClassUID = CTImageStorage
    series.InstanceCreationDate = _da(moment)
    series.InstanceCreationTime = _tm(moment)
    series.ContributingEquipmentSequence = _contributing_equipment(
        header, model_name=model_name, model_version=model_version, now=moment
    )
    # General Series
    series.Modality = "CT"
    series.SeriesInstanceUID = series_uid
    series.SeriesNumber = series_number if series_number is not None else ""
    series.SeriesDate = _da(moment)
    series.SeriesTime = _tm(moment)
    series.SeriesDescription = description
    series.RelatedSeriesSequence = _related_series(source, study_uid)
    if "PatientPosition" not in series:
        series.PatientPosition = ""
    # Frame of Reference
    series.FrameOfReferenceUID = source.frame_of_reference_uid
    if "PositionReferenceIndicator" not in series:
        series.PositionReferenceIndicator = ""
    # General Equipment
    series.Manufacturer = MANUFACTURER
    series.ManufacturerModelName = "bonect synthetic CT"
    series.SoftwareVersions = _software_versions(model_name, model_version)
    # General Image, CT Image
    series.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if slice_is_axial(affine) else "OTHER"]
    series.ContentDate = _da(moment)
    series.ContentTime = _tm(moment)
    series.AcquisitionNumber = ""
    series.KVP = ""
    if "Laterality" not in series and "ImageLaterality" not in series:
        series.ImageLaterality = "U"  # head and neck: unpaired
    series.BurnedInAnnotation = "NO"
    series.LossyImageCompression = "00"
    series.ImageComments = comments
    # General Reference, Common Instance Reference
    series.DerivationDescription = derivation
    # Image Pixel
    series.SamplesPerPixel = 1
    series.PhotometricInterpretation = "MONOCHROME2"
    series.Rows = rows
    series.Columns = columns
    series.BitsAllocated = 16
    series.BitsStored = 16
    series.HighBit = 15
    series.PixelRepresentation = 1
    series.RescaleIntercept = "0"
    series.RescaleSlope = "1"
    series.RescaleType = "HU"
    # VOI LUT
    series.WindowCenter = [str(c) for c, _, _ in WINDOW_PRESETS]
    series.WindowWidth = [str(w) for _, w, _ in WINDOW_PRESETS]
    series.WindowCenterWidthExplanation = [name for _, _, name in WINDOW_PRESETS]

    datasets = []
    for k in range(n_slices):
        ds = copy.deepcopy(series)
        ds.file_meta = file_meta_for(CTImageStorage, instance_uids[k])
        ds.SOPInstanceUID = instance_uids[k]
        ds.InstanceNumber = k + 1
        ds.SourceImageSequence = [_source_image_item(source.sources[k])]
        ds.ReferencedSeriesSequence = _referenced_series(source, source.sources[k])
        ds.update(image_plane_module(affine, k))
        ds.PixelData = _hu_to_int16(hu[k]).tobytes()  # slice by slice: no float64 volume
        datasets.append(ds)
    return datasets


def write_synthetic_ct(
    hu: npt.NDArray[np.generic],
    source: MRSeries,
    out_dir: Path,
    *,
    model_name: str,
    model_version: str,
    method: str,
    clinical_use: bool,
    series_number: int | None = None,
    now: datetime | None = None,
    generation: int = 1,
    replaces: int | None = None,
) -> list[Path]:
    """Write the synthetic CT of ``source`` as ``out_dir/CT_<InstanceNumber:04d>.dcm``.

    The arguments are those of :func:`synthetic_ct_datasets`; the files are explicit VR little
    endian with file meta information, written durably as a whole (see
    :func:`bonect.converter.dicom_files.save_datasets`). Other files in ``out_dir`` are left
    alone.

    Returns
    -------
    list[Path]
        The files written, in slice order.
    """
    datasets = synthetic_ct_datasets(
        hu,
        source,
        model_name=model_name,
        model_version=model_version,
        method=method,
        clinical_use=clinical_use,
        series_number=series_number,
        now=now,
        generation=generation,
        replaces=replaces,
    )
    paths = write_datasets(datasets, out_dir, prefix="CT")
    logger.info(
        "wrote synthetic CT series %s (%d instances, from MR series %s) to %s",
        datasets[0].SeriesInstanceUID if datasets else "-",
        len(paths),
        source.series_uid,
        out_dir,
    )
    return paths
