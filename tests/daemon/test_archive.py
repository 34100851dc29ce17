"""The archive: durable exact-bytes writes, at paths only valid UIDs can build.

(Reading and validating headers is tested in tests/dicom/test_header.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from bonect.daemon.archive import Archive
from bonect.dicom.header import InstanceHeader
from bonect.dicom.uids import InvalidUIDError


def _ref(
    *, study_uid: str = "1.2.3", series_uid: str = "1.2.3.4", sop_instance_uid: str = "1.2.3.4.5"
) -> InstanceHeader:
    return InstanceHeader(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=MRImageStorage,
        study_uid=study_uid,
        series_uid=series_uid,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        modality="MR",
    )


def test_open_creates_folders_and_write_stores_the_exact_bytes(tmp_path: Path) -> None:
    archive = Archive.open(tmp_path / "var")
    assert archive.incoming.is_dir()
    encoded = bytes(range(256)) * 10

    path = archive.write(_ref(), encoded)

    assert path == tmp_path / "var" / "incoming" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert path.read_bytes() == encoded
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_adopt_renames_a_file_on_the_same_file_system_into_place(tmp_path: Path) -> None:
    archive = Archive.open(tmp_path / "var")
    received = tmp_path / "received.dcm"
    received.write_bytes(b"as received")

    path = archive.adopt(_ref(), received)

    assert path == archive.path_for(_ref()) and path.read_bytes() == b"as received"
    assert not received.exists()  # renamed, not copied
    assert list(path.parent.iterdir()) == [path]


def test_adopt_copies_a_file_from_another_file_system(tmp_path: Path) -> None:
    elsewhere = Path("/dev/shm")
    if not elsewhere.is_dir() or elsewhere.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the tests' temporary folder")
    archive = Archive.open(tmp_path / "var")
    received = elsewhere / f"bonect-test-{os.getpid()}.dcm"
    received.write_bytes(b"x" * 3_000_000)
    try:
        path = archive.adopt(_ref(), received)
        assert path.read_bytes() == b"x" * 3_000_000
        assert received.exists()  # copied: its owner (pynetdicom) deletes it
        assert list(path.parent.iterdir()) == [path]  # no .part file left
    finally:
        received.unlink()


@pytest.mark.parametrize("fsync", [True, False])
def test_fsync_flushes_file_and_folder_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    archive = Archive.open(tmp_path, fsync=fsync)
    archive.write(_ref(sop_instance_uid="1.2.3.4.1"), b"first")  # creates the folders
    flushed: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        flushed.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    path = archive.write(_ref(sop_instance_uid="1.2.3.4.2"), b"second")

    assert path.read_bytes() == b"second"
    assert len(flushed) == (2 if fsync else 0)  # the file, then its folder after the rename
    assert sorted(p.name for p in path.parent.iterdir()) == ["1.2.3.4.1.dcm", "1.2.3.4.2.dcm"]


def test_writing_again_replaces_the_instance(tmp_path: Path) -> None:
    archive = Archive.open(tmp_path)
    archive.write(_ref(), b"first")
    path = archive.write(_ref(), b"second")
    assert path.read_bytes() == b"second"
    assert list(path.parent.iterdir()) == [path]


def test_a_ref_with_a_bad_uid_writes_nothing(tmp_path: Path) -> None:
    archive = Archive.open(tmp_path / "var")
    with pytest.raises(InvalidUIDError):
        archive.write(_ref(study_uid="../../x"), b"evil")
    with pytest.raises(InvalidUIDError):
        archive.write(_ref(sop_instance_uid="1.2/../../../y"), b"evil")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    archive = Archive.open(tmp_path)
    with pytest.raises(TypeError):
        archive.write(_ref(), 42)  # type: ignore[arg-type]  # not bytes: the write fails
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_free_bytes_is_the_disk_of_the_archive(tmp_path: Path) -> None:
    assert Archive.open(tmp_path).free_bytes() > 0


def test_partial_writes_left_by_a_killed_process_are_removed(tmp_path: Path) -> None:
    archive = Archive.open(tmp_path / "archive")
    kept = archive.write(_ref(), b"instance")
    strays = [kept.parent / ".abc123.part", archive.incoming / "x" / ".def456.part"]
    for stray in strays:
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"half an instance")

    assert archive.remove_partial_writes() == 2
    assert not any(stray.exists() for stray in strays)
    assert kept.read_bytes() == b"instance"
    assert archive.remove_partial_writes() == 0
