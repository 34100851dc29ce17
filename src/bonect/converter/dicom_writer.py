"""The synthetic CT DICOM series: CT Image Storage instances on the MR's grid, labelled as derived.

The series joins the source MR's study and frame of reference, takes one instance per MR slice
(same ImagePositionPatient, orientation and spacing), stores int16 HU with a trivial rescale,
references the MR series and images it was computed from, and says in-band that it is synthetic
(ImageType DERIVED\\SECONDARY, SeriesDescription, ImageComments, contributing equipment, and
the Manufacturer that :func:`bonect.dicom.provenance.is_own_sct` recognises).

Series and SOP Instance UIDs are derived from the source series UID, the method, the model and
the generation: the same conversion again gives the very same objects (a retried send re-sends
them, never a new series); a later generation (the MR series grew) is another series.

The modules every bonect writer shares come from :mod:`bonect.dicom.modules`; what only an sCT
carries (UIDs, labels, references to the MR) from :mod:`bonect.converter.sct_modules`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

import bonect
from bonect.converter.sct_modules import (
    WINDOW_PRESETS,
    contributing_equipment,
    referenced_series,
    related_series,
    sct_series_description,
    sct_series_number,
    software_versions,
    source_image_item,
    synthetic_ct_uids,
)
from bonect.converter.series import ImageSeries
from bonect.dicom.attribute_repair import repaired_source_header
from bonect.dicom.files import file_meta_for, instance_path, save_each, write_datasets
from bonect.dicom.modules import (
    copy_patient_and_study,
    dicom_date,
    dicom_time,
    general_equipment_module,
    hu_rescale_module,
    image_pixel_module,
    image_plane_module,
    slice_is_axial,
    sop_common_module,
    voi_lut_module,
)
from bonect.dicom.provenance import MANUFACTURER, MANUFACTURER_MODEL_NAME
from bonect.errors import ConversionError, SeriesError
from bonect.hounsfield import HU_MAX, HU_MIN

__all__ = [
    "SCT_CONTEXT",
    "WrittenSeries",
    "iter_synthetic_ct_datasets",
    "planned_sct_instances",
    "synthetic_ct_datasets",
    "write_synthetic_ct",
]

logger = logging.getLogger(__name__)

_PREFIX = "CT"  # file names: CT_<InstanceNumber:04d>.dcm
# the SOP class and transfer syntax of every sCT file (a sender proposes them before it has one)
SCT_CONTEXT: tuple[str, str] = (str(CTImageStorage), str(ExplicitVRLittleEndian))

# Attributes of the source's series and frame of reference that still hold for the sCT.
_SOURCE_SERIES_KEYWORDS: tuple[str, ...] = (
    "PositionReferenceIndicator",
    "PatientPosition",
    "BodyPartExamined",
    "Laterality",
    "ImageLaterality",
)


def _validate(hu: npt.NDArray[np.generic], source: ImageSeries) -> None:
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
    source: ImageSeries,
    *,
    model_name: str,
    model_version: str,
    method: str,
    clinical_use: bool,
    series_number: int | None = None,
    now: datetime | None = None,
    generation: int = 1,
    replaces: int | None = None,
    uncertainty_summary: str | None = None,
) -> list[Dataset]:
    """Build the CT Image Storage instances of a synthetic CT on the grid of ``source``.

    Parameters
    ----------
    hu
        Hounsfield units, shape ``source.volume.shape`` (float or integer); rounded and
        clipped to [:data:`~bonect.hounsfield.HU_MIN`, :data:`~bonect.hounsfield.HU_MAX`].
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
    uncertainty_summary
        Where the planes disagree, in words (:func:`bonect.uncertainty.summary`), appended to
        ImageComments; None for a method without planes.

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
    return list(
        iter_synthetic_ct_datasets(
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
            uncertainty_summary=uncertainty_summary,
        )
    )


def iter_synthetic_ct_datasets(
    hu: npt.NDArray[np.generic],
    source: ImageSeries,
    *,
    model_name: str,
    model_version: str,
    method: str,
    clinical_use: bool,
    series_number: int | None = None,
    now: datetime | None = None,
    generation: int = 1,
    replaces: int | None = None,
    uncertainty_summary: str | None = None,
) -> Iterator[Dataset]:
    """:func:`synthetic_ct_datasets` one instance at a time, in slice order (checked, and the
    shared header built, when the first is asked for)."""
    _validate(hu, source)
    moment = now if now is not None else datetime.now()
    header = repaired_source_header(source.header, series_uid=source.series_uid, log=logger)
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
    description = sct_series_description(
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
        + ("" if uncertainty_summary is None else f" Uncertainty: {uncertainty_summary}.")
    )

    series = Dataset()  # what all instances share
    copy_patient_and_study(header, series)
    for keyword in _SOURCE_SERIES_KEYWORDS:
        if keyword in header:
            series[keyword] = copy.deepcopy(header[keyword])
    series.update(sop_common_module(CTImageStorage, created=moment))
    series.ContributingEquipmentSequence = contributing_equipment(
        header, model_name=model_name, model_version=model_version, now=moment
    )
    # General Series
    series.Modality = "CT"
    series.SeriesInstanceUID = series_uid
    series.SeriesNumber = series_number if series_number is not None else ""
    series.SeriesDate = dicom_date(moment)
    series.SeriesTime = dicom_time(moment)
    series.SeriesDescription = description
    series.RelatedSeriesSequence = related_series(source, study_uid)
    if "PatientPosition" not in series:
        series.PatientPosition = ""
    # Frame of Reference
    series.FrameOfReferenceUID = source.frame_of_reference_uid
    if "PositionReferenceIndicator" not in series:
        series.PositionReferenceIndicator = ""
    series.update(
        general_equipment_module(
            MANUFACTURER,
            model_name=MANUFACTURER_MODEL_NAME,
            software_versions=software_versions(model_name, model_version),
        )
    )
    # General Image, CT Image
    series.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if slice_is_axial(affine) else "OTHER"]
    series.ContentDate = dicom_date(moment)
    series.ContentTime = dicom_time(moment)
    series.AcquisitionNumber = ""
    series.KVP = ""
    if "Laterality" not in series and "ImageLaterality" not in series:
        series.ImageLaterality = "U"  # head and neck: unpaired
    series.BurnedInAnnotation = "NO"
    series.LossyImageCompression = "00"
    series.ImageComments = comments
    # General Reference, Common Instance Reference
    series.DerivationDescription = derivation
    series.update(image_pixel_module(rows, columns, bits_stored=16, signed=True))
    series.update(hu_rescale_module(0))
    series.update(voi_lut_module(WINDOW_PRESETS))

    for k in range(n_slices):
        ds = copy.deepcopy(series)
        ds.file_meta = file_meta_for(CTImageStorage, instance_uids[k])
        ds.SOPInstanceUID = instance_uids[k]
        ds.InstanceNumber = k + 1
        ds.SourceImageSequence = [source_image_item(source.sources[k])]
        ds.ReferencedSeriesSequence = referenced_series(source, source.sources[k])
        ds.update(image_plane_module(affine, k))
        ds.PixelData = _hu_to_int16(hu[k]).tobytes()  # slice by slice: no float64 volume
        yield ds


@dataclass(frozen=True)
class WrittenSeries:
    """What :func:`write_synthetic_ct` wrote: the files, in slice order, and their UIDs."""

    paths: tuple[Path, ...]
    series_uid: str
    sop_instance_uids: tuple[str, ...]  # one per path, in the same order
    # the datasets written, for objects that reference them (the uncertainty object)
    datasets: tuple[Dataset, ...] = field(default=(), repr=False, compare=False)


def planned_sct_instances(
    source: ImageSeries,
    out_dir: Path,
    *,
    model_name: str,
    model_version: str,
    method: str,
    generation: int = 1,
) -> tuple[str, list[tuple[str, Path]]]:
    """The series UID and the (SOP Instance UID, path) of each instance that
    :func:`write_synthetic_ct` will write for these arguments, known before any is written
    (the daemon plans its sends with them)."""
    series_uid, instance_uids = synthetic_ct_uids(
        source.series_uid,
        method=method,
        model_name=model_name,
        model_version=model_version,
        n_slices=source.volume.shape[0],
        generation=generation,
    )
    files = [(uid, instance_path(out_dir, _PREFIX, k + 1)) for k, uid in enumerate(instance_uids)]
    return series_uid, files


def write_synthetic_ct(
    hu: npt.NDArray[np.generic],
    source: ImageSeries,
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
    uncertainty_summary: str | None = None,
    on_written: Callable[[Path], None] | None = None,
) -> WrittenSeries:
    """Write the synthetic CT of ``source`` as ``out_dir/CT_<InstanceNumber:04d>.dcm``.

    The arguments are those of :func:`synthetic_ct_datasets`; the files are explicit VR little
    endian with file meta information. Without ``on_written`` they are written durably as a
    whole (see :func:`bonect.dicom.files.save_datasets`): none is under its final name before
    all are. With it, each file is built and written in turn and ``on_written(path)`` is
    called as soon as it is whole under its final name (a sender may take it then); all are
    flushed to disk before this returns (:func:`bonect.dicom.files.save_each`). Other files in
    ``out_dir`` are left alone.

    Returns
    -------
    WrittenSeries
        The files written, in slice order, with the UIDs they were given.
    """
    instances = iter_synthetic_ct_datasets(
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
        uncertainty_summary=uncertainty_summary,
    )
    if on_written is None:
        datasets = list(instances)
        paths = write_datasets(datasets, out_dir, prefix=_PREFIX)
    else:
        datasets = []

        def saved(ds: Dataset, path: Path) -> None:
            datasets.append(ds)
            on_written(path)

        paths = save_each(
            ((ds, instance_path(out_dir, _PREFIX, int(ds.InstanceNumber))) for ds in instances),
            saved,
        )
    logger.info(
        "wrote synthetic CT series %s (%d instances, from MR series %s) to %s",
        datasets[0].SeriesInstanceUID if datasets else "-",
        len(paths),
        source.series_uid,
        out_dir,
    )
    return WrittenSeries(
        paths=tuple(paths),
        series_uid=str(datasets[0].SeriesInstanceUID) if datasets else "",
        sop_instance_uids=tuple(str(d.SOPInstanceUID) for d in datasets),
        datasets=tuple(datasets),
    )
