"""The archive of received instances: durable, exact-bytes files at paths built from valid UIDs.

An instance is identified by its :class:`~bonect.dicom.header.InstanceHeader`. Every UID in it
is validated (again) before it becomes part of a path, so a hostile header (``"../../etc"``)
can never write outside the storage dir. :meth:`Archive.write` stores the encoded bytes exactly
as they were received, through a temporary file that is fsync'd and renamed into place (the
fsyncs can be turned off, ``[storage] fsync = false``, trading durability on power loss for
speed):

    <root>/incoming/<study uid>/<series uid>/<sop instance uid>.dcm

:meth:`Archive.adopt` does the same for an instance already in a file (a C-STORE data set
streamed to disk, :mod:`bonect.daemon.incoming`): renamed into place when it is on the same file
system, copied otherwise.

Writing the same instance twice replaces the file with the new bytes (a peer re-sending an
instance is normal), so the archive never holds two copies of one SOP Instance UID.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from bonect.dicom.files import fsync_dir
from bonect.dicom.header import InstanceHeader
from bonect.dicom.uids import InvalidUIDError, validate_uid

logger = logging.getLogger(__name__)

INCOMING = "incoming"
_COPY_CHUNK = 1024 * 1024


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

    def path_for(self, header: InstanceHeader) -> Path:
        """Where ``header``'s instance is (or will be) stored; its UIDs are validated again here.

        Raises
        ------
        InvalidUIDError
            ``header`` holds a UID that is not valid (it was not made by ``read_header``).
        """
        parts = (
            validate_uid(header.study_uid, "StudyInstanceUID"),
            validate_uid(header.series_uid, "SeriesInstanceUID"),
            validate_uid(header.sop_instance_uid, "SOPInstanceUID") + ".dcm",
        )
        path = self._incoming.joinpath(*parts)
        if not path.resolve().is_relative_to(self._incoming):  # defence in depth
            raise InvalidUIDError("SOPInstanceUID", header.sop_instance_uid)
        return path

    def write(self, header: InstanceHeader, encoded: bytes) -> Path:
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
            ``header`` holds a UID that is not valid.
        """
        path = self.path_for(header)
        self._make_folders(path.parent)
        self._replace(path, lambda f: f.write(encoded))
        if self._fsync:
            fsync_dir(path.parent)
        logger.debug("archived %s (%d bytes) at %s", header.sop_instance_uid, len(encoded), path)
        return path

    def adopt(self, header: InstanceHeader, source: Path) -> Path:
        """Store the file ``source`` (an instance as received) durably and return its path.

        ``source`` is fsync'd and renamed into place when it is on the archive's file system,
        else copied (as :meth:`write` does, through a ``.part`` file) and left for its owner to
        delete; then the folder is fsync'd. (Without ``fsync``, the same steps without them.)

        Raises
        ------
        OSError
            The disk refused, or ``source`` cannot be read.
        InvalidUIDError
            ``header`` holds a UID that is not valid.
        """
        path = self.path_for(header)
        self._make_folders(path.parent)
        if self._fsync:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            os.replace(source, path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_in(source, path)
        if self._fsync:
            fsync_dir(path.parent)
        logger.debug("archived %s (from %s) at %s", header.sop_instance_uid, source, path)
        return path

    def _make_folders(self, folder: Path) -> None:
        for missing in self._missing_folders(folder):
            missing.mkdir(exist_ok=True)
            if self._fsync:
                fsync_dir(missing.parent)

    def _copy_in(self, source: Path, path: Path) -> None:
        with source.open("rb") as src:
            self._replace(path, lambda f: shutil.copyfileobj(src, f, _COPY_CHUNK))

    def _replace(self, path: Path, fill: Callable[[BinaryIO], object]) -> None:
        """Write ``path`` whole or not at all: ``fill`` writes a ``.*.part`` file beside it,
        which is fsync'd (with ``fsync``) and renamed over ``path``; removed on failure."""
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise

    def remove_partial_writes(self) -> int:
        """Delete the ``.*.part`` files a killed process left behind; how many there were.

        Only at start, before the receive path runs: the archive has one receiving process
        (a ``.part`` file being written by it now would otherwise be taken from under it)."""
        removed = 0
        for stray in self._incoming.rglob(".*.part"):
            with contextlib.suppress(FileNotFoundError):
                stray.unlink()
                removed += 1
        if removed:
            logger.warning("removed %d partly written file(s) left in the archive", removed)
        return removed

    def free_bytes(self) -> int:
        """Free bytes on the file system of the archive, for the disk reserve."""
        return shutil.disk_usage(self._root).free

    def _missing_folders(self, folder: Path) -> list[Path]:
        missing: list[Path] = []
        while folder != self._incoming and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        return missing[::-1]
