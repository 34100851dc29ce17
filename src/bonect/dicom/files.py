"""DICOM files: their file meta information, and saving them durably (temp, fsync, rename).

A series is saved as a whole (:func:`write_datasets`): every file is written under a temporary
name first, all of them are fsync'd (a few at a time: the disk takes concurrent flushes in one
journal commit, about 5x faster here than one after the other), then renamed into place, and
the folder is fsync'd once. A crash leaves the old files, the new ones, or stray ``.*.tmp``
files, never a truncated instance under its final name. :func:`fsync_dir` is also what the
daemon's archive uses after its own renames.

:func:`save_each` is the streamed variant for a reader that takes each file as soon as it is
whole (the daemon sends an sCT instance while the next is written): each file appears under its
final name at once, and all of them are flushed to disk together at the end, so the folder is
durable only when it returns.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

import bonect

_FSYNC_THREADS = 4


def file_meta_for(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File meta information for an explicit VR little endian file of this instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"BONECT_{bonect.__version__}"[:16]
    return meta


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_datasets(items: Sequence[tuple[Dataset, Path]]) -> list[Path]:
    """Write each dataset to its path (explicit VR little endian file format), durably.

    Each dataset needs its ``file_meta`` (see
    :func:`file_meta_for`). Nothing is under its final name
    until every file is written and flushed to disk; on an error the temporary files are
    removed and the error raised.

    Returns
    -------
    list[Path]
        The paths, in the order given.
    """
    latest = {path: ds for ds, path in items}  # a path given twice gets the later dataset
    tmps: list[Path] = []
    try:
        for path, ds in latest.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_name(path)
            tmps.append(tmp)
            with tmp.open("wb") as fh:
                ds.save_as(fh, enforce_file_format=True)
        _flush(tmps)
    except BaseException:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    for tmp, path in zip(tmps, latest, strict=True):
        tmp.replace(path)
    for folder in dict.fromkeys(path.parent for path in latest):
        fsync_dir(folder)
    return [path for _, path in items]


def save_dataset(ds: Dataset, path: Path) -> Path:
    """Write one dataset as a DICOM file, durably (see :func:`save_datasets`)."""
    save_datasets([(ds, path)])
    return path


def _flush(paths: Sequence[Path]) -> None:
    if len(paths) > 1:
        with ThreadPoolExecutor(min(_FSYNC_THREADS, len(paths))) as pool:
            list(pool.map(_fsync_file, paths))
    else:
        for path in paths:
            _fsync_file(path)


def save_each(
    items: Iterable[tuple[Dataset, Path]], on_saved: Callable[[Dataset, Path], None]
) -> list[Path]:
    """Write each dataset to its path as it comes, and call ``on_saved`` once it is whole there.

    Each file is written under a temporary name and renamed (a reader never sees a truncated
    instance under its final name); the files and their folders are fsync'd together once all
    are written, so they are durable only when this returns. On an error the file being written
    is removed and the error raised; the files saved before it stay (the caller owns the folder).

    Returns
    -------
    list[Path]
        The paths, in the order given.
    """
    paths: list[Path] = []
    folders: dict[Path, None] = {}  # each made once, and fsync'd at the end
    for ds, path in items:
        if path.parent not in folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            folders[path.parent] = None
        tmp = _tmp_name(path)
        try:
            with tmp.open("wb") as fh:
                ds.save_as(fh, enforce_file_format=True)
            tmp.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        paths.append(path)
        on_saved(ds, path)
    _flush(list(dict.fromkeys(paths)))
    for folder in folders:
        fsync_dir(folder)
    return paths


def instance_path(out_dir: Path, prefix: str, instance_number: int) -> Path:
    """Where :func:`write_datasets` puts the instance numbered ``instance_number``."""
    return out_dir / f"{prefix}_{instance_number:04d}.dcm"


def write_datasets(datasets: Sequence[Dataset], out_dir: Path, *, prefix: str) -> list[Path]:
    """Write datasets as ``<prefix>_<InstanceNumber:04d>.dcm`` in ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_datasets(
        [(ds, instance_path(out_dir, prefix, int(ds.InstanceNumber))) for ds in datasets]
    )
