"""IHE IOCM rejection notes: how a superseded synthetic-CT series is withdrawn from a PACS.

A series converted again (a later generation, see :mod:`bonect.catalog.jobs`) replaces its
earlier sCT series, which has other UIDs. Once the new one is stored, the worker deletes the
earlier one from the archive and sends each destination that may hold it a rejection note: a
Key Object Selection Document titled (113001, DCM, "Rejected for Quality Reasons") that
references every instance of the superseded series, as IHE Imaging Object Change Management
(IOCM) specifies. A PACS that implements IOCM hides or deletes those instances; one that does
not keeps the note as one more object in the study. ``rejection_notes = false`` on a
destination sends it none.

The note's UIDs derive from the superseded series' UID, so a note sent again after a crash or
a timeout is the same object, never a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, KeyObjectSelectionDocumentStorage

from bonect.dicom.files import file_meta_for, save_dataset
from bonect.dicom.modules import copy_patient_and_study
from bonect.dicom.provenance import MANUFACTURER
from bonect.dicom.uids import deterministic_uid

logger = logging.getLogger(__name__)

REJECTED_FOR_QUALITY_REASONS = ("113001", "DCM", "Rejected for Quality Reasons")
"""The document title (CID 7011) of an IOCM rejection note for a superseded series."""

SERIES_NUMBER = 9999
SERIES_DESCRIPTION = "bonect rejection note"


def rejection_note_uids(superseded_series_uid: str) -> tuple[str, str]:
    """The Series and SOP Instance UIDs of the rejection note of ``superseded_series_uid``."""
    key = ("bonect-rejection-note", superseded_series_uid)
    return deterministic_uid(*key, "series"), deterministic_uid(*key, "instance")


@dataclass(frozen=True)
class Rejected:
    """One instance to reject: its series, SOP class and SOP instance UIDs."""

    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def _evidence(source: Dataset, instances: Sequence[Rejected]) -> list[Dataset]:
    """What highdicom needs of each rejected instance: patient, study and its three UIDs."""
    items = []
    for instance in instances:
        item = Dataset()
        copy_patient_and_study(source, item)
        item.SeriesInstanceUID = instance.series_uid
        item.SOPClassUID = instance.sop_class_uid
        item.SOPInstanceUID = instance.sop_instance_uid
        item.Rows = item.Columns = 1  # an image: referenced by an IMAGE content item
        items.append(item)
    return items


def rejection_note(
    source: Dataset,
    superseded_series_uid: str,
    instance_uids: Sequence[str],
    *,
    description: str,
    sop_class_uid: str = CTImageStorage,
    now: datetime | None = None,
    others: Sequence[Rejected] = (),
) -> Dataset:
    """The IOCM rejection note of a superseded sCT series, as a dataset with file meta.

    Parameters
    ----------
    source
        A header of the MR series the sCT was computed from: its patient and study (the note
        joins the study; the superseded series is in it too).
    superseded_series_uid
        SeriesInstanceUID of the sCT series being withdrawn.
    instance_uids
        Every SOP Instance UID of that series (at least one).
    description
        The Key Object Description: why, in words (no patient data).
    sop_class_uid
        SOP Class of the superseded instances (bonect writes CT Image Storage).
    now
        Content and creation date and time; default the current local time.
    others
        Instances of other series rejected with it: the sCT's uncertainty object
        (:mod:`bonect.converter.uncertainty_object`), which references the rejected images.
    """
    if not instance_uids:
        raise ValueError(f"no instances of {superseded_series_uid} to reject")
    moment = now if now is not None else datetime.now()
    rejected = [Rejected(superseded_series_uid, sop_class_uid, uid) for uid in instance_uids]
    evidence = _evidence(source, [*rejected, *others])
    content = KeyObjectSelection(
        document_title=CodedConcept(*REJECTED_FOR_QUALITY_REASONS),
        referenced_objects=evidence,
        description=description[:1024],
    )
    series_uid, sop_instance_uid = rejection_note_uids(superseded_series_uid)
    document = KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=SERIES_DESCRIPTION,
        content_date=moment.date(),
        content_time=moment.time().replace(microsecond=0),
        series_date=moment.date(),
        series_time=moment.time().replace(microsecond=0),
    )
    note = Dataset(document)
    note.file_meta = file_meta_for(KeyObjectSelectionDocumentStorage, sop_instance_uid)
    return note


def write_rejection_note(path: Path, note: Dataset) -> Path:
    """Write ``note`` to ``path`` atomically (temp, fsync, rename)."""
    save_dataset(note, path)
    logger.info(
        "rejection note %s written for %d instance(s)",
        note.SOPInstanceUID,
        len(note.ContentSequence) - 1,
    )
    return path
