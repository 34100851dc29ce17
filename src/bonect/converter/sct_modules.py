"""What only a synthetic CT series carries: its UIDs, numbering, labels and references to the MR.

The IOD modules every bonect writer shares are in :mod:`bonect.dicom.modules`; the series
itself is assembled in :mod:`bonect.converter.dicom_writer`. Here:

* the deterministic Series and SOP Instance UIDs (:func:`synthetic_ct_uids`): from the source
  series UID, the method, the model and the generation;
* the SeriesNumber (:func:`sct_series_number`) and SeriesDescription
  (:func:`sct_series_description`), which say in the PACS' series list that it is synthetic;
* the Contributing Equipment Sequence (the MR scanner, then bonect) and the references to the
  source MR series and images.
"""

from __future__ import annotations

import copy
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

import bonect
from bonect.converter.series import ImageSeries, SourceImage
from bonect.dicom.modules import code_item
from bonect.dicom.provenance import MANUFACTURER, MANUFACTURER_MODEL_NAME
from bonect.dicom.uids import deterministic_uid
from bonect.hounsfield import BONE_WINDOW

# (center, width, explanation): bone first, as the series exists for the bones.
WINDOW_PRESETS: tuple[tuple[int, int, str], ...] = ((*BONE_WINDOW, "BONE"), (40, 80, "BRAIN"))

_LO_MAX = 64  # Long String
_SOURCE_IMAGE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


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
        The series UID and one SOP Instance UID per slice (see
        :func:`bonect.dicom.uids.deterministic_uid`).
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


def sct_series_description(
    method: str, *, clinical_use: bool, generation: int = 1, replaces: int | None = None
) -> str:
    """The SeriesDescription: synthetic, by which method, which version, and if not clinical."""
    suffix = "" if clinical_use else " NOT FOR CLINICAL USE"
    version = "" if generation == 1 else f" v{generation}"
    if replaces is not None:
        version += f" replaces v{replaces}"
    base = f"Synthetic CT (bonect {method})"
    if len(base + version + suffix) > _LO_MAX:
        base = f"Synthetic CT ({method})"
    return (base + version)[: _LO_MAX - len(suffix)] + suffix


def software_versions(model_name: str, model_version: str) -> list[str]:
    """SoftwareVersions of an sCT: bonect's version, then the model's."""
    return [f"bonect {bonect.__version__}", f"{model_name} {model_version}"[:_LO_MAX]]


def contributing_equipment(
    header: Dataset, *, model_name: str, model_version: str, now: datetime
) -> DicomSequence:
    """The MR scanner (when the header names one) as acquisition equipment, bonect as processing."""
    items = []
    if header.get("Manufacturer"):
        scanner = Dataset()
        scanner.PurposeOfReferenceCodeSequence = [
            code_item("109101", "DCM", "Acquisition Equipment")
        ]
        scanner.Manufacturer = header.Manufacturer
        for keyword in ("InstitutionName", "ManufacturerModelName", "SoftwareVersions"):
            if header.get(keyword):
                scanner[keyword] = copy.deepcopy(header[keyword])
        items.append(scanner)
    bonect_item = Dataset()
    bonect_item.PurposeOfReferenceCodeSequence = [
        code_item("109102", "DCM", "Processing Equipment")
    ]
    bonect_item.Manufacturer = MANUFACTURER
    bonect_item.ManufacturerModelName = MANUFACTURER_MODEL_NAME
    bonect_item.SoftwareVersions = software_versions(model_name, model_version)
    bonect_item.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    bonect_item.ContributionDescription = "Synthetic CT computed from bone MR"
    items.append(bonect_item)
    return DicomSequence(items)


def source_image_item(image: SourceImage) -> Dataset:
    """A Source Image Sequence item: the MR image (or frame) this sCT slice was computed from."""
    item = Dataset()
    item.ReferencedSOPClassUID = image.sop_class_uid
    item.ReferencedSOPInstanceUID = image.sop_instance_uid
    if image.frame_number is not None:
        item.ReferencedFrameNumber = image.frame_number
    item.PurposeOfReferenceCodeSequence = [code_item(*_SOURCE_IMAGE_PURPOSE)]
    return item


def referenced_series(source: ImageSeries, image: SourceImage) -> DicomSequence:
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


def related_series(source: ImageSeries, study_uid: str) -> DicomSequence:
    """The General Series module's Related Series Sequence: the source MR series."""
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.SeriesInstanceUID = source.series_uid
    item.PurposeOfReferenceCodeSequence = [code_item(*_SOURCE_IMAGE_PURPOSE)]
    return DicomSequence([item])
