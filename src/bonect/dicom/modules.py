"""IOD module builders shared by every bonect writer: the sCT, the phantom, the rejection note.

Each builder returns (or fills) the attributes of one module of PS3.3, from plain values: the
Patient and Study modules copied from a source header, SOP Common, General Equipment, Image
Plane (from a volume affine), Image Pixel (monochrome, 16 bits allocated), a HU rescale and
VOI LUT window presets. What is specific to one series type (the sCT's references to its MR,
the phantom's acquisition attributes) stays with its writer.

Values are formatted here once: Decimal Strings of at most 16 characters (:func:`decimal_string`),
dates and times (:func:`dicom_date`, :func:`dicom_time`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import date, datetime, time

import numpy as np
import numpy.typing as npt
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import format_number_as_ds

_AXIAL_COSINE = 0.9  # |slice normal . z| above which a slice counts as axial (about 25 degrees)


def _keywords(text: str) -> tuple[str, ...]:
    """The DICOM keywords in ``text`` (split on whitespace), each checked in the dictionary."""
    keywords = tuple(text.split())
    unknown = [k for k in keywords if tag_for_keyword(k) is None]
    if unknown:
        raise ValueError(f"not DICOM keywords: {unknown}")
    return keywords


PATIENT_STUDY_KEYWORDS = _keywords(
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
"""Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial Study
attributes: what a derived object copies from its source."""

TYPE2_PATIENT_STUDY = _keywords(
    """
    PatientName PatientID PatientBirthDate PatientSex
    StudyDate StudyTime ReferringPhysicianName StudyID AccessionNumber
    """
)
"""Type 2 attributes of those modules: present, empty if the source lacks them."""


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """A Code Sequence item: CodeValue, CodingSchemeDesignator, CodeMeaning."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def decimal_string(value: float) -> str:
    """A Decimal String of at most 16 characters, with -0 and tiny round-off shown as 0."""
    v = float(value)
    if abs(v) < 1e-9:
        v = 0.0
    return format_number_as_ds(v)


def dicom_date(moment: date) -> str:
    """A DA value (YYYYMMDD)."""
    return moment.strftime("%Y%m%d")


def dicom_time(moment: datetime | time) -> str:
    """A TM value: HHMMSS, with the microseconds (HHMMSS.FFFFFF) when there are any."""
    return moment.strftime("%H%M%S.%f" if moment.microsecond else "%H%M%S")


def copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient and Study modules (and the character set) from ``source`` to ``target``.

    Type 2 attributes missing from ``source`` are added empty.
    """
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = copy.deepcopy(source.SpecificCharacterSet)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in target:
            setattr(target, keyword, "")


def sop_common_module(sop_class_uid: str, *, created: datetime) -> Dataset:
    """SOP Common: the SOP Class and the instance creation date and time.

    The SOP Instance UID is left to the caller (one per instance of a series).
    """
    module = Dataset()
    module.SOPClassUID = sop_class_uid
    module.InstanceCreationDate = dicom_date(created)
    module.InstanceCreationTime = dicom_time(created)
    return module


def general_equipment_module(
    manufacturer: str, *, model_name: str, software_versions: str | Sequence[str]
) -> Dataset:
    """General Equipment: Manufacturer, ManufacturerModelName, SoftwareVersions."""
    module = Dataset()
    module.Manufacturer = manufacturer
    module.ManufacturerModelName = model_name
    if isinstance(software_versions, str):
        module.SoftwareVersions = software_versions
    else:
        module.SoftwareVersions = list(software_versions)
    return module


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
    plane.PixelSpacing = [decimal_string(norms[1]), decimal_string(norms[2])]
    plane.ImageOrientationPatient = [decimal_string(v) for v in (*row_cosine, *column_cosine)]
    plane.ImagePositionPatient = [decimal_string(v) for v in position]
    plane.SliceThickness = decimal_string(norms[0])
    plane.SpacingBetweenSlices = decimal_string(norms[0])
    plane.SliceLocation = decimal_string(float(np.dot(position, normal)))
    return plane


def slice_is_axial(affine: npt.NDArray[np.float64]) -> bool:
    """Whether slices of a volume with this affine are axial (normal within ~25° of z)."""
    _check_affine(affine)
    row = affine[:3, 2]
    column = affine[:3, 1]
    normal = np.cross(row, column)
    normal = normal / np.linalg.norm(normal)
    return bool(abs(normal[2]) >= _AXIAL_COSINE)


def image_pixel_module(rows: int, columns: int, *, bits_stored: int, signed: bool) -> Dataset:
    """Image Pixel attributes of a monochrome image with 16 bits allocated (no PixelData)."""
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 1..16 with 16 bits allocated, got {bits_stored}")
    module = Dataset()
    module.SamplesPerPixel = 1
    module.PhotometricInterpretation = "MONOCHROME2"
    module.Rows = rows
    module.Columns = columns
    module.BitsAllocated = 16
    module.BitsStored = bits_stored
    module.HighBit = bits_stored - 1
    module.PixelRepresentation = 1 if signed else 0
    return module


def hu_rescale_module(intercept: int) -> Dataset:
    """RescaleIntercept ``intercept``, RescaleSlope 1, RescaleType HU: HU = stored + intercept."""
    module = Dataset()
    module.RescaleIntercept = str(intercept)
    module.RescaleSlope = "1"
    module.RescaleType = "HU"
    return module


def _whole_or_ds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else decimal_string(value)


def voi_lut_module(windows: Sequence[tuple[float, float, str]]) -> Dataset:
    """VOI LUT window presets from ``(centre, width, explanation)`` triples, first the default."""
    if not windows:
        raise ValueError("at least one window preset is needed")
    module = Dataset()
    module.WindowCenter = [_whole_or_ds(centre) for centre, _, _ in windows]
    module.WindowWidth = [_whole_or_ds(width) for _, width, _ in windows]
    module.WindowCenterWidthExplanation = [name for _, _, name in windows]
    return module
