"""Reading the catalog's header fields from a received pydicom dataset (header only, no pixels).

The SCP and the drop folder both call :func:`header_from_dataset`; a dataset without the UIDs
that identify it raises :class:`HeaderError`, which the SCP answers with 0xC210. Everything
else is optional and read leniently: a malformed optional value becomes "absent", never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset

from bonect.catalog.records import InstanceHeader, Orientation, Vector3
from bonect.errors import BonectError

logger = logging.getLogger(__name__)


class HeaderError(BonectError):
    """A received dataset lacks an identifying UID; it cannot be archived or catalogued."""


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom raises on some malformed values only when they are read
        return ""
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:  # absent, malformed or out of range: treated as absent
        return None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        items = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else []
        floats = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return floats if len(floats) == count else None


def _first_item(ds: Dataset, *path: str) -> Dataset | None:
    current: Dataset | None = ds
    for keyword in path:
        if current is None:
            return None
        seq = current.get(keyword)
        current = seq[0] if seq else None
    return current


def _geometry(ds: Dataset) -> tuple[Vector3 | None, Orientation | None]:
    """Position and orientation of a classic instance, or of the first frame of an enhanced one."""
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    if position is None:
        frame = _first_item(ds, "PerFrameFunctionalGroupsSequence", "PlanePositionSequence")
        position = _floats(frame.get("ImagePositionPatient"), 3) if frame else None
    if orientation is None:
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            item = _first_item(ds, groups, "PlaneOrientationSequence")
            orientation = _floats(item.get("ImageOrientationPatient"), 6) if item else None
            if orientation is not None:
                break
    pos: Vector3 | None = (position[0], position[1], position[2]) if position else None
    ori: Orientation | None = None
    if orientation:
        ori = (
            orientation[0],
            orientation[1],
            orientation[2],
            orientation[3],
            orientation[4],
            orientation[5],
        )
    return pos, ori


def header_from_dataset(ds: Dataset) -> InstanceHeader:
    """The catalog's fields of one instance; raises :class:`HeaderError` without its UIDs."""
    uids = {
        key: _text(ds, key)
        for key in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
    }
    missing = [key for key, value in uids.items() if not value]
    if missing:
        raise HeaderError(f"dataset lacks {', '.join(missing)}")
    try:
        image_type = tuple(str(v).strip() for v in (ds.get("ImageType") or ()))
    except Exception:
        image_type = ()
    position, orientation = _geometry(ds)
    return InstanceHeader(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        modality=_text(ds, "Modality"),
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        study_date=_text(ds, "StudyDate")[:8],
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        sequence_name=_text(ds, "SequenceName") or _text(ds, "PulseSequenceName"),
        image_type=image_type,
        manufacturer=_text(ds, "Manufacturer"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        instance_number=_int(ds, "InstanceNumber"),
        image_position=position,
        image_orientation=orientation,
        images_in_acquisition=_int(ds, "ImagesInAcquisition"),
        number_of_frames=_int(ds, "NumberOfFrames"),
    )
