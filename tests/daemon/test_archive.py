"""The archive: UID validation of instance refs, and durable exact-bytes writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from bonect.daemon.archive import (
    Archive,
    InstanceRef,
    InvalidInstanceError,
    InvalidUIDError,
    validate_uid,
)
from bonect.errors import BonectError
from series_factory import make_mr_series, write_series


def _ref(**changes: str) -> InstanceRef:
    values = {
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
        "sop_instance_uid": "1.2.3.4.5",
        "sop_class_uid": MRImageStorage,
        "modality": "MR",
        "transfer_syntax_uid": ExplicitVRLittleEndian,
    }
    return InstanceRef(**{**values, **changes})


def test_ref_from_a_file_header(tmp_path: Path) -> None:
    ds = make_mr_series(shape=(1, 4, 4))[0]
    (path,) = write_series([ds], tmp_path)

    ref = InstanceRef.from_dataset(dcmread(path, stop_before_pixels=True))

    assert ref == InstanceRef(
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=MRImageStorage,
        modality="MR",
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc",
        "1.2.3/../../x",
        "1.2.3\n",
        "1.2.3\\x",
        "",
        "1..2",
        "1.2.03",
        "1.2.3.",
        "1.2.abc",
        "/1.2.3",
        "1." + "2" * 63,  # 65 characters
    ],
)
def test_invalid_uids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidUIDError) as info:
        validate_uid(bad, "StudyInstanceUID")
    assert isinstance(info.value, BonectError)


def test_longest_valid_uid_and_nul_padding_are_accepted() -> None:
    longest = "1." + "2" * 62
    assert validate_uid(longest, "X") == longest
    assert validate_uid("1.2.3\x00", "X") == "1.2.3"


def test_missing_uid_or_transfer_syntax_is_refused() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPClassUID = MRImageStorage
    with pytest.raises(InvalidUIDError, match="SOPInstanceUID"):
        InstanceRef.from_dataset(ds, transfer_syntax_uid=ExplicitVRLittleEndian)
    ds.SOPInstanceUID = "1.2.3.4.5"
    with pytest.raises(InvalidUIDError, match="TransferSyntaxUID"):
        InstanceRef.from_dataset(ds)
    assert InstanceRef.from_dataset(ds, transfer_syntax_uid=ExplicitVRLittleEndian).modality == ""


def test_undecodable_header_is_an_invalid_instance() -> None:
    class Broken(Dataset):
        def get(self, *args: object, **kwargs: object) -> object:
            raise EOFError("truncated")

    with pytest.raises(InvalidInstanceError, match="undecodable"):
        InstanceRef.from_dataset(Broken(), transfer_syntax_uid=ExplicitVRLittleEndian)


def test_open_creates_folders_and_write_stores_the_exact_bytes(tmp_path: Path) -> None:
    archive = Archive.open(tmp_path / "var")
    assert archive.incoming.is_dir()
    encoded = bytes(range(256)) * 10

    path = archive.write(_ref(), encoded)

    assert path == tmp_path / "var" / "incoming" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert path.read_bytes() == encoded
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


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
        archive.write(_ref(study_instance_uid="../../x"), b"evil")
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
