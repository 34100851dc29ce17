"""The DICOM uncertainty object of an sCT series: where the three planes' predictions disagree.

Beside the synthetic CT series a destination may receive one more object, built with highdicom
from the sCT's own datasets (so it joins their study and frame of reference and references every
sCT instance as a source image), in a series of its own:

* ``segmentation``: a BINARY Segmentation of the voxels whose spread between the planes exceeds
  the threshold (:func:`bonect.uncertainty.threshold_hu`);
* ``parametric_map``: a Parametric Map of the spread itself, in HU (unsigned 16-bit integers,
  identity mapping), 0 outside the head.

Both carry bonect's Manufacturer and ImageType ``DERIVED``, so that one coming back is bonect's
own output (:func:`bonect.dicom.provenance.is_own_sct`), never converted nor kept. UIDs derive
from the sCT series UID and the kind: the same sCT gives the very same object, so a send retried
after a crash sends it again, never a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, get_args

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ParametricMapStorage, SegmentationStorage

import bonect
from bonect.dicom.files import file_meta_for, write_datasets
from bonect.dicom.provenance import MANUFACTURER, MANUFACTURER_MODEL_NAME
from bonect.dicom.uids import deterministic_uid
from bonect.hounsfield import HU_MAX, HU_MIN

__all__ = [
    "KINDS",
    "SOP_CLASS",
    "UncertaintyKind",
    "WrittenObject",
    "uncertainty_object",
    "uncertainty_object_uids",
    "uncertainty_parametric_map",
    "uncertainty_segmentation",
    "write_uncertainty_object",
]

logger = logging.getLogger(__name__)

UncertaintyKind = Literal["segmentation", "parametric_map"]
KINDS: Final[tuple[UncertaintyKind, ...]] = get_args(UncertaintyKind)

SOP_CLASS: Final[dict[UncertaintyKind, str]] = {
    "segmentation": SegmentationStorage,
    "parametric_map": ParametricMapStorage,
}
"""The SOP Class UID of each kind."""

SERIES_NUMBER_OFFSET: Final[dict[UncertaintyKind, int]] = {
    "segmentation": 1000,
    "parametric_map": 2000,
}
"""Added to the sCT's SeriesNumber (9000 + the MR's, see
:func:`bonect.converter.sct_modules.sct_series_number`) for the object's series."""

SPREAD_MAX_HU: Final = HU_MAX - HU_MIN
"""The largest spread two predictions in the HU range can have (the map's value range)."""

SHOWN_SPREAD_HU: Final = 300.0
"""The window of the parametric map: a spread from 0 (black) to this (white)."""

_FILE_PREFIX: Final[dict[UncertaintyKind, str]] = {
    "segmentation": "SEG",
    "parametric_map": "PM",
}
_LABEL: Final = "PLANES DISAGREE"  # CS, at most 16 characters
_ALGORITHM: Final = "bonect multi-plane spread"
_HEAD_AND_NECK: Final = ("774007", "SCT", "Head and Neck")


def uncertainty_object_uids(sct_series_uid: str, kind: UncertaintyKind) -> tuple[str, str]:
    """The Series and SOP Instance UIDs of the ``kind`` object of the sCT series."""
    key = ("bonect-uncertainty", sct_series_uid, kind)
    return deterministic_uid(*key, "series"), deterministic_uid(*key, "instance")


def _check(spread: npt.NDArray[np.floating], sct: Sequence[Dataset]) -> None:
    if not sct:
        raise ValueError("no sCT instances to reference")
    first = sct[0]
    shape = (len(sct), int(first.Rows), int(first.Columns))
    if spread.shape != shape:
        raise ValueError(f"spread shape {spread.shape} differs from the sCT's {shape}")
    if not np.all(np.isfinite(spread)):
        raise ValueError("the spread has non-finite values")


def _series_number(sct: Dataset, kind: UncertaintyKind) -> int:
    number = sct.get("SeriesNumber")
    base = int(number) if number not in (None, "") else 9000
    candidate = base + SERIES_NUMBER_OFFSET[kind]
    return candidate if candidate < 2**31 else SERIES_NUMBER_OFFSET[kind]


def _description(sct: Dataset, what: str) -> str:
    """``Synthetic CT <what>``, ending like the sCT's if that says it is not clinical."""
    suffix = " NOT FOR CLINICAL USE"
    not_clinical = str(sct.get("SeriesDescription", "")).endswith(suffix)
    return f"Synthetic CT {what}" + (suffix if not_clinical else "")


def _common(sct: Sequence[Dataset], kind: UncertaintyKind, now: datetime) -> dict[str, object]:
    """The arguments both highdicom constructors share: UIDs, numbering, equipment, dates."""
    first = sct[0]
    series_uid, sop_instance_uid = uncertainty_object_uids(str(first.SeriesInstanceUID), kind)
    return {
        "source_images": list(sct),
        "series_instance_uid": series_uid,
        "series_number": _series_number(first, kind),
        "sop_instance_uid": sop_instance_uid,
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": MANUFACTURER_MODEL_NAME,
        "software_versions": _software_versions(first)[0],  # all of them: see _finish
        "device_serial_number": f"bonect {bonect.__version__}",
        "content_label": _LABEL,
        "content_date": now.date(),
        "content_time": now.time().replace(microsecond=0),
        "series_date": now.date(),
        "series_time": now.time().replace(microsecond=0),
    }


def _software_versions(sct: Dataset) -> list[str]:
    """The sCT's SoftwareVersions (bonect's version, then the model's)."""
    versions = sct.get("SoftwareVersions") or f"bonect {bonect.__version__}"
    return [str(versions)] if isinstance(versions, str) else [str(v) for v in versions]


def _frame_anatomy(sct: Dataset) -> Dataset:
    """The Frame Anatomy functional group: the head and neck, laterality the sCT's or U."""
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = _HEAD_AND_NECK
    item = Dataset()
    item.AnatomicRegionSequence = [region]
    item.FrameLaterality = sct.get("Laterality") or sct.get("ImageLaterality") or "U"
    return item


def _finish(obj: Dataset, sct: Dataset) -> Dataset:
    """A plain dataset with file meta and the sCT's software versions."""
    ds = Dataset(obj)  # highdicom's objects are Dataset subclasses
    ds.SoftwareVersions = _software_versions(sct)  # highdicom takes one value only
    ds.file_meta = file_meta_for(str(obj.SOPClassUID), str(obj.SOPInstanceUID))
    return ds


def uncertainty_segmentation(
    spread: npt.NDArray[np.floating],
    sct: Sequence[Dataset],
    *,
    threshold_hu: float,
    now: datetime | None = None,
) -> Dataset:
    """A BINARY Segmentation of the voxels whose ``spread`` exceeds ``threshold_hu``.

    Parameters
    ----------
    spread
        The spread between the planes (HU) on the sCT's grid, shape (slices, rows, columns)
        in the order of ``sct``.
    sct
        The sCT's datasets, one per slice in slice order (headers suffice): the source images.
    threshold_hu
        A voxel is in the segment when its spread is above this.
    now
        Content and series date and time; default the current local time.
    """
    _check(spread, sct)
    moment = now if now is not None else datetime.now()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_ALGORITHM,
        family=codes.DCM.ArtificialIntelligence,
        version=bonect.__version__,
        parameters={"threshold_hu": f"{threshold_hu:g}"},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"spread > {threshold_hu:g} HU",
        segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
        segmented_property_type=codes.DCM.ImageRegion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    mask = spread > threshold_hu
    seg = hd.seg.Segmentation(
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        content_description=f"planes disagree by > {threshold_hu:g} HU"[:64],
        series_description=_description(sct[0], "uncertainty (segmentation)"),
        omit_empty_frames=bool(mask.any()),  # highdicom needs one frame at least
        **_common(sct, "segmentation", moment),  # type: ignore[arg-type]
    )
    return _finish(seg, sct[0])


def uncertainty_parametric_map(
    spread: npt.NDArray[np.floating],
    sct: Sequence[Dataset],
    *,
    now: datetime | None = None,
) -> Dataset:
    """A Parametric Map of ``spread`` in HU (rounded to whole HU), on the sCT's grid.

    The arguments are those of :func:`uncertainty_segmentation` but the threshold.
    """
    _check(spread, sct)
    moment = now if now is not None else datetime.now()
    values = np.clip(np.rint(spread), 0, SPREAD_MAX_HU).astype(np.uint16)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SPREAD_HU",
        lut_explanation="max - min of the three planes' predictions",
        unit=codes.UCUM.HounsfieldUnit,
        value_range=(0, SPREAD_MAX_HU),
        slope=1,
        intercept=0,
    )
    window = hd.VOILUTTransformation(
        window_center=SHOWN_SPREAD_HU / 2,
        window_width=SHOWN_SPREAD_HU,
        window_explanation="SPREAD",
    )
    pm = hd.pm.ParametricMap(
        pixel_array=values,
        contains_recognizable_visual_features=True,  # the map has the head's outline
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_description="spread between the planes, HU",
        series_description=_description(sct[0], "uncertainty (spread map)"),
        **_common(sct, "parametric_map", moment),  # type: ignore[arg-type]
    )
    ds = _finish(pm, sct[0])
    # Frame Anatomy: says the laterality, which General Series would need without it
    ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [_frame_anatomy(sct[0])]
    return ds


def uncertainty_object(
    kind: UncertaintyKind,
    spread: npt.NDArray[np.floating],
    sct: Sequence[Dataset],
    *,
    threshold_hu: float,
    now: datetime | None = None,
) -> Dataset:
    """The ``kind`` object of the sCT ``sct`` (see the two builders)."""
    builders: dict[UncertaintyKind, Callable[[], Dataset]] = {
        "segmentation": lambda: uncertainty_segmentation(
            spread, sct, threshold_hu=threshold_hu, now=now
        ),
        "parametric_map": lambda: uncertainty_parametric_map(spread, sct, now=now),
    }
    return builders[kind]()


@dataclass(frozen=True)
class WrittenObject:
    """What :func:`write_uncertainty_object` wrote: the file and its UIDs."""

    kind: UncertaintyKind
    path: Path
    series_uid: str
    sop_instance_uid: str


def write_uncertainty_object(
    kind: UncertaintyKind,
    spread: npt.NDArray[np.floating],
    sct: Sequence[Dataset],
    out_dir: Path,
    *,
    threshold_hu: float,
    now: datetime | None = None,
) -> WrittenObject:
    """Write the ``kind`` object of ``sct`` as ``out_dir/SEG_0001.dcm`` or ``PM_0001.dcm``."""
    ds = uncertainty_object(kind, spread, sct, threshold_hu=threshold_hu, now=now)
    (path,) = write_datasets([ds], out_dir, prefix=_FILE_PREFIX[kind])
    logger.info(
        "wrote the uncertainty %s %s of sCT series %s to %s",
        kind,
        ds.SOPInstanceUID,
        ds.SeriesInstanceUID,
        path,
    )
    return WrittenObject(kind, path, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
