"""The archive of received instances: validated header refs and durable, exact-bytes files.

An instance is identified by an :class:`InstanceRef` read from its header. Every UID in it is
validated before it becomes part of a path, so a hostile header (``"../../etc"``) can never
write outside the storage dir. :meth:`Archive.write` stores the encoded bytes exactly as they
were received, through a temporary file that is fsync'd and renamed into place (the fsyncs can
be turned off, ``[storage] fsync = false``, trading durability on power loss for speed):

    <root>/incoming/<study uid>/<series uid>/<sop instance uid>.dcm

Writing the same instance twice replaces the file with the new bytes (a peer re-sending an
instance is normal), so the archive never holds two copies of one SOP Instance UID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

from bonect.converter.dicom_files import fsync_dir
from bonect.errors import BonectError

logger = logging.getLogger(__name__)

INCOMING = "incoming"
_UID_CHARS = re.compile(r"[0-9.]+")
_MAX_UID_LENGTH = 64


class InvalidInstanceError(BonectError):
    """A received instance's header cannot be used: missing elements, undecodable, bad UIDs."""

    def __init__(self, message: str, *, sop_instance_uid: str | None = None) -> None:
        super().__init__(message)
        self.sop_instance_uid = sop_instance_uid


class InvalidUIDError(InvalidInstanceError):
    """A UID is not a valid DICOM UID (so it must never become part of a path)."""

    def __init__(self, keyword: str, value: object) -> None:
        super().__init__(f"{keyword} is not a valid UID: {str(value)[:80]!r}")
        self.keyword = keyword


def validate_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a UID string, or raise :class:`InvalidUIDError`.

    A valid UID has at most 64 characters, only digits and dots, and passes pydicom's
    ``UID.is_valid`` (no empty components, no leading zeros).
    """
    if not isinstance(value, str):
        raise InvalidUIDError(keyword, value)
    uid = value.rstrip("\x00 ")  # UI values are padded to even length with NUL
    if not uid or len(uid) > _MAX_UID_LENGTH or _UID_CHARS.fullmatch(uid) is None:
        raise InvalidUIDError(keyword, value)
    try:
        valid = UID(uid).is_valid  # UID() itself raises in pydicom's strict mode
    except ValueError as exc:
        raise InvalidUIDError(keyword, value) from exc
    if not valid:
        raise InvalidUIDError(keyword, value)
    return uid


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """What the node needs to know about one instance, read from its header only."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax_uid: str

    @classmethod
    def from_dataset(cls, ds: Dataset, *, transfer_syntax_uid: str | None = None) -> InstanceRef:
        """Read and validate the ref of ``ds``.

        Parameters
        ----------
        ds
            The dataset; only header elements are accessed, pixel data stays encoded.
        transfer_syntax_uid
            The transfer syntax the bytes are encoded in (the presentation context of a
            C-STORE). Without it, ``ds.file_meta.TransferSyntaxUID`` is used.

        Raises
        ------
        InvalidUIDError
            A UID is missing or invalid.
        InvalidInstanceError
            The header cannot be decoded.
        """
        try:
            values = {
                "StudyInstanceUID": ds.get("StudyInstanceUID"),
                "SeriesInstanceUID": ds.get("SeriesInstanceUID"),
                "SOPInstanceUID": ds.get("SOPInstanceUID"),
                "SOPClassUID": ds.get("SOPClassUID"),
            }
            if transfer_syntax_uid is None:
                meta = getattr(ds, "file_meta", None)
                transfer_syntax_uid = None if meta is None else meta.get("TransferSyntaxUID")
            modality = ds.get("Modality", "")
        except Exception as exc:  # pydicom parses lazily: any element may fail here
            raise InvalidInstanceError(f"undecodable header: {exc!r}") from exc
        checked = {kw: validate_uid(v, kw) for kw, v in values.items()}
        return cls(
            study_instance_uid=checked["StudyInstanceUID"],
            series_instance_uid=checked["SeriesInstanceUID"],
            sop_instance_uid=checked["SOPInstanceUID"],
            sop_class_uid=checked["SOPClassUID"],
            modality=str(modality or "").strip(),
            transfer_syntax_uid=validate_uid(transfer_syntax_uid, "TransferSyntaxUID"),
        )


class Archive:
    """Received instances as files under ``<root>/incoming``; build it with :meth:`open`."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self._root = root
        self._incoming = root / INCOMING
        self._fsync = fsync

    @classmethod
    def open(cls, root: Path, *, fsync: bool = True) -> Archive:
        """Open (creating its folders if needed) the archive under ``root``.

        With ``fsync`` false, :meth:`write` leaves flushing to the operating system: a crash of
        the process loses nothing, a power cut may lose the latest instances.
        """
        archive = cls(root.resolve(), fsync=fsync)
        archive._incoming.mkdir(parents=True, exist_ok=True)
        return archive

    @property
    def root(self) -> Path:
        """The storage folder the archive lives in."""
        return self._root

    @property
    def incoming(self) -> Path:
        """The folder of received instances."""
        return self._incoming

    def path_for(self, ref: InstanceRef) -> Path:
        """Where ``ref`` is (or will be) stored; its UIDs are validated again here."""
        parts = (
            validate_uid(ref.study_instance_uid, "StudyInstanceUID"),
            validate_uid(ref.series_instance_uid, "SeriesInstanceUID"),
            validate_uid(ref.sop_instance_uid, "SOPInstanceUID") + ".dcm",
        )
        path = self._incoming.joinpath(*parts)
        if not path.resolve().is_relative_to(self._incoming):  # defence in depth
            raise InvalidUIDError("SOPInstanceUID", ref.sop_instance_uid)
        return path

    def write(self, ref: InstanceRef, encoded: bytes) -> Path:
        """Store ``encoded`` (the bytes exactly as received) durably and return its path.

        The bytes go to a temporary file in the target folder, are fsync'd, renamed over the
        final name and the folder is fsync'd, so a crash leaves either the old file, the new
        one, or a stray ``.*.part`` file, never a truncated instance. (Without ``fsync``, the
        same steps without the two fsyncs.)

        Raises
        ------
        OSError
            The disk refused (full, read-only, permissions).
        InvalidUIDError
            ``ref`` holds a UID that is not valid.
        """
        path = self.path_for(ref)
        for folder in self._missing_folders(path.parent):
            folder.mkdir(exist_ok=True)
            if self._fsync:
                fsync_dir(folder.parent)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encoded)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        if self._fsync:
            fsync_dir(path.parent)
        logger.debug("archived %s (%d bytes) at %s", ref.sop_instance_uid, len(encoded), path)
        return path

    def free_bytes(self) -> int:
        """Free bytes on the file system of the archive, for the disk reserve."""
        return shutil.disk_usage(self._root).free

    def _missing_folders(self, folder: Path) -> list[Path]:
        missing: list[Path] = []
        while folder != self._incoming and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        return missing[::-1]
