"""The one instance header: what bonect reads from a received instance, and its one parser.

:func:`read_header` reads an :class:`InstanceHeader` from a pydicom dataset's header (pixel data
is never touched). The four UIDs that identify an instance (SOP Instance, SOP Class, Study,
Series) and the transfer syntax are validated with :func:`bonect.dicom.uids.validate_uid`,
because they name files in the archive; a missing, invalid or undecodable one raises
:class:`HeaderError` (the receive path answers it with 0xC210). Every other field is optional
and read leniently: a malformed optional value becomes "absent", never an error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from bonect.dicom.geometry import Orientation, Vector3, frame_geometry
from bonect.dicom.uids import InvalidUIDError, validate_uid
from bonect.errors import BonectError

_IDENTIFYING = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


class HeaderError(BonectError):
    """A dataset's header cannot identify the instance: a UID is missing, invalid, undecodable."""

    def __init__(self, message: str, *, sop_instance_uid: str | None = None) -> None:
        super().__init__(
            message if sop_instance_uid is None else f"{message} (SOP Instance {sop_instance_uid})"
        )
        self.sop_instance_uid = sop_instance_uid


def patient_key(patient_id: str, issuer_of_patient_id: str = "") -> str:
    """The pseudonymous key of a patient: SHA-256 (hex) of ``issuer \\ PatientID``."""
    return hashlib.sha256(f"{issuer_of_patient_id}\\{patient_id}".encode()).hexdigest()


@dataclass(frozen=True)
class InstanceHeader:
    """The header fields of one received instance that the archive and the catalog keep.

    The four UIDs and ``transfer_syntax_uid`` are validated UIDs when the header comes from
    :func:`read_header` (``transfer_syntax_uid`` is empty only in headers built by hand).
    ``patient_id`` is kept for pairing and hashed into the patient key; it is never logged.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str = ""
    modality: str = ""
    patient_id: str = field(default="", repr=False)
    issuer_of_patient_id: str = field(default="", repr=False)
    study_date: str = ""
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    image_type: tuple[str, ...] = ()
    manufacturer: str = ""
    frame_of_reference_uid: str = ""
    instance_number: int | None = None
    image_position: Vector3 | None = None
    image_orientation: Orientation | None = None
    images_in_acquisition: int | None = None
    number_of_frames: int | None = None

    @property
    def patient_key(self) -> str:
        """The pseudonymous key of the patient (see :func:`patient_key`)."""
        return patient_key(self.patient_id, self.issuer_of_patient_id)

    @property
    def expected_count(self) -> int | None:
        """How many slices (frames) the series should have, when the header says so."""
        if self.number_of_frames is not None and self.number_of_frames > 1:
            return self.number_of_frames
        return self.images_in_acquisition


def read_header(ds: Dataset, *, transfer_syntax_uid: str | None = None) -> InstanceHeader:
    """Read and validate the header of one instance.

    Parameters
    ----------
    ds
        The dataset; only header elements are accessed, pixel data stays encoded.
    transfer_syntax_uid
        The transfer syntax the instance's bytes are encoded in (the presentation context of a
        C-STORE). Without it, ``ds.file_meta.TransferSyntaxUID`` is used.

    Raises
    ------
    HeaderError
        An identifying UID or the transfer syntax is missing, invalid or cannot be decoded;
        the message names the element, and the SOP Instance UID when that one is valid.
    """
    try:
        raw = {keyword: ds.get(keyword) for keyword in _IDENTIFYING}
        if transfer_syntax_uid is None:
            meta = getattr(ds, "file_meta", None)
            transfer_syntax_uid = None if meta is None else meta.get("TransferSyntaxUID")
    except Exception as exc:  # pydicom parses lazily: any element may fail here
        raise HeaderError(f"undecodable header: {exc!r}") from exc
    sop_instance_uid: str | None = None
    try:
        sop_instance_uid = validate_uid(raw["SOPInstanceUID"], "SOPInstanceUID")
        uids = {keyword: validate_uid(value, keyword) for keyword, value in raw.items()}
        transfer_syntax = validate_uid(transfer_syntax_uid, "TransferSyntaxUID")
    except InvalidUIDError as exc:
        raise HeaderError(str(exc), sop_instance_uid=sop_instance_uid) from exc
    position, orientation = _geometry(ds)
    return InstanceHeader(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=uids["SOPClassUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        modality=_text(ds, "Modality"),
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        study_date=_text(ds, "StudyDate")[:8],
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        sequence_name=_text(ds, "SequenceName") or _text(ds, "PulseSequenceName"),
        image_type=_texts(ds, "ImageType"),
        manufacturer=_text(ds, "Manufacturer"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        instance_number=_int(ds, "InstanceNumber"),
        image_position=position,
        image_orientation=orientation,
        images_in_acquisition=_int(ds, "ImagesInAcquisition"),
        number_of_frames=_int(ds, "NumberOfFrames"),
    )


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom raises on some malformed values only when they are read
        return ""
    return "" if value is None else str(value).strip()


def _texts(ds: Dataset, keyword: str) -> tuple[str, ...]:
    try:
        return tuple(str(v).strip() for v in (ds.get(keyword) or ()))
    except Exception:  # malformed: treated as absent
        return ()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:  # absent, malformed or out of range: treated as absent
        return None


def _geometry(ds: Dataset) -> tuple[Vector3 | None, Orientation | None]:
    """Position and orientation of a classic instance, or of the first frame of an enhanced one.

    Malformed geometry is treated as absent (settle then refuses the series, with a reason).
    """
    try:
        first = frame_geometry(ds)[0]
    except Exception:  # pydicom parses lazily: a malformed sequence raises when read
        return None, None
    return first.position, first.orientation
