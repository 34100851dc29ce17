"""The drop folder: files copied into import/ are ingested like C-STOREs, others rejected."""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset

from bonect.daemon.archive import Archive
from bonect.daemon.dropfolder import DropFolder
from bonect.daemon.receive import Receiver
from bonect.dicom.header import InstanceHeader
from series_factory import make_mr_series, write_series

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@dataclass
class Sink:
    fail: bool = False
    records: list[tuple[InstanceHeader, Path, datetime, str, str | None]] = field(
        default_factory=list
    )
    ended: list[str] = field(default_factory=list)
    recorded: threading.Event = field(default_factory=threading.Event)

    def record(
        self,
        header: InstanceHeader,
        path: Path,
        *,
        received_at: datetime,
        association_id: str,
        calling_ae: str | None,
    ) -> None:
        if self.fail:
            raise OSError("catalog unavailable")
        self.records.append((header, path, received_at, association_id, calling_ae))
        self.recorded.set()

    def association_ended(self, association_id: str, at: datetime, *, aborted: bool) -> None:
        self.ended.append(association_id)


@dataclass
class Disk:
    free: int = 10**12

    def free_bytes(self) -> int:
        return self.free


@dataclass
class Setup:
    drop: DropFolder
    archive: Archive
    sink: Sink
    disk: Disk


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    archive = Archive.open(tmp_path / "var")
    sink = Sink()
    disk = Disk()
    receiver = Receiver(
        archive=archive,
        sink=sink,
        reserve_bytes=10**9,
        free_bytes=disk.free_bytes,
        clock=lambda: NOW,
    )
    drop = DropFolder.open(tmp_path / "var", receiver=receiver)
    return Setup(drop, archive, sink, disk)


def test_complete_dicom_files_are_ingested_as_received_and_removed(
    setup: Setup, tmp_path: Path
) -> None:
    sources = write_series(make_mr_series((3, 8, 8)), tmp_path / "src")
    dropped = [shutil.copy(p, setup.drop.folder / p.name) for p in sources]

    first = setup.drop.ingest_once()  # sizes noted: the copies might still be growing
    assert first.waiting == 3 and first.ingested == ()
    second = setup.drop.ingest_once()

    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources]
    assert second.ingested == tuple(uids) and second.waiting == 0
    assert not any(Path(p).exists() for p in dropped)
    for (header, path, received_at, assoc_id, calling_ae), source in zip(
        setup.sink.records, sources, strict=True
    ):
        assert path == setup.archive.path_for(header)
        assert path.read_bytes() == source.read_bytes()  # the file exactly as dropped
        assert received_at == NOW and assoc_id == f"import:{source.name}"
        assert calling_ae is None
    assert setup.sink.ended == [f"import:{p.name}" for p in sources]


def test_a_file_still_growing_waits(setup: Setup, tmp_path: Path) -> None:
    (source,) = write_series(make_mr_series((1, 8, 8)), tmp_path / "src")
    data = source.read_bytes()
    target = setup.drop.folder / "growing.dcm"
    target.write_bytes(data[:200])

    assert setup.drop.ingest_once().waiting == 1
    target.write_bytes(data)  # more bytes arrived since the last scan
    assert setup.drop.ingest_once().waiting == 1
    assert len(setup.drop.ingest_once().ingested) == 1
    assert setup.archive.path_for(setup.sink.records[0][0]).read_bytes() == data


def test_a_closed_file_is_taken_at_once(setup: Setup, tmp_path: Path) -> None:
    (source,) = write_series(make_mr_series((1, 8, 8)), tmp_path / "src")
    (setup.drop.folder / "sub").mkdir()
    target = Path(shutil.copyfile(source, setup.drop.folder / "sub" / "x.dcm"))
    setup.drop.mark_closed(target)

    assert setup.drop.ingest_once().ingested != ()
    assert setup.sink.records[0][3] == "import:sub/x.dcm"


def test_a_text_file_is_moved_to_rejected(setup: Setup) -> None:
    note = setup.drop.folder / "readme.txt"
    note.write_text("not DICOM at all\n")
    setup.drop.mark_closed(note)

    report = setup.drop.ingest_once()

    assert report.rejected == (setup.drop.rejected_folder / "readme.txt",)
    assert not note.exists() and report.rejected[0].read_text() == "not DICOM at all\n"
    assert setup.sink.records == []
    note.write_text("again")
    setup.drop.mark_closed(note)
    assert setup.drop.ingest_once().rejected == (setup.drop.rejected_folder / "readme.txt.1",)
    assert setup.drop.ingest_once() == type(report)((), (), 0, 0)  # rejected/ is not scanned


def test_an_invalid_uid_is_rejected_and_nothing_escapes(setup: Setup, tmp_path: Path) -> None:
    pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
    pydicom_config.settings.writing_validation_mode = pydicom_config.WARN
    ds = make_mr_series((1, 8, 8))[0]
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.SeriesInstanceUID = "1.2/../../../../escaped"
        (source,) = write_series([ds], setup.drop.folder)
        setup.drop.mark_closed(source)
        assert len(setup.drop.ingest_once().rejected) == 1
    assert [p for p in setup.archive.incoming.rglob("*") if p.is_file()] == []
    assert not (tmp_path / "escaped").exists()


def test_when_the_sink_fails_the_file_stays_for_the_next_scan(setup: Setup, tmp_path: Path) -> None:
    (source,) = write_series(make_mr_series((1, 8, 8)), setup.drop.folder)
    setup.drop.mark_closed(source)
    setup.sink.fail = True
    assert setup.drop.ingest_once().kept == 1 and source.exists()

    setup.sink.fail = False
    assert len(setup.drop.ingest_once().ingested) == 1 and not source.exists()


def test_each_file_is_read_once(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_series(make_mr_series((3, 8, 8)), setup.drop.folder)
    for source in sources:
        setup.drop.mark_closed(source)
    reads: list[object] = []
    real_read_partial = pydicom.filereader.read_partial

    def counting_read_partial(fileobj: object, *args: object, **kwargs: object) -> Dataset:
        reads.append(fileobj)
        return real_read_partial(fileobj, *args, **kwargs)  # type: ignore[arg-type]

    # every dcmread, however it was imported, parses through this module global
    monkeypatch.setattr(pydicom.filereader, "read_partial", counting_read_partial)

    assert len(setup.drop.ingest_once().ingested) == 3

    assert len(setup.sink.records) == 3
    assert len(reads) == 3  # one header read per file; nothing reads the archived copy again


def test_under_the_disk_reserve_a_file_waits(setup: Setup) -> None:
    (source,) = write_series(make_mr_series((1, 8, 8)), setup.drop.folder)
    setup.drop.mark_closed(source)
    setup.disk.free = 10**9 - 1

    assert setup.drop.ingest_once().kept == 1 and source.exists()
    assert setup.sink.records == []

    setup.disk.free = 10**9
    assert len(setup.drop.ingest_once().ingested) == 1 and not source.exists()


def test_hidden_files_are_left_alone(setup: Setup) -> None:
    partial = setup.drop.folder / ".IM1.dcm.part"
    partial.write_bytes(b"partial")
    setup.drop.ingest_once()
    assert setup.drop.ingest_once() == type(setup.drop.ingest_once())((), (), 0, 0)
    assert partial.exists()


def test_the_watcher_ingests_a_copied_file(setup: Setup, tmp_path: Path) -> None:
    (source,) = write_series(make_mr_series((1, 8, 8)), tmp_path / "src")
    setup.drop.start(rescan_seconds=0.2)
    try:
        shutil.copyfile(source, setup.drop.folder / "copied.dcm")  # inotify: closed after write
        assert setup.sink.recorded.wait(timeout=20)
    finally:
        setup.drop.stop()
    assert setup.sink.records[0][3] == "import:copied.dcm"
    assert not (setup.drop.folder / "copied.dcm").exists()


def test_a_file_over_the_dataset_limit_is_rejected_unread(
    setup: Setup,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``[storage] max_dataset_mb`` holds for the drop folder as for a C-STORE: a larger file
    goes to rejected/ on its size alone (never parsed), with one line giving the size and the
    limit and no patient data; a file of exactly the limit is ingested."""
    big, small = write_series(
        make_mr_series((2, 256, 256), patient_id="DROP-LIMIT"), tmp_path / "src"
    )
    limit = small.stat().st_size  # ~128 KiB: the test's limit, as from its config
    with big.open("ab") as f:  # one byte more than the limit (trailing padding)
        f.truncate(limit + 1)
    shutil.copyfile(big, setup.drop.folder / "big.dcm")
    shutil.copyfile(small, setup.drop.folder / "small.dcm")
    receiver = Receiver(
        archive=setup.archive,
        sink=setup.sink,
        free_bytes=setup.disk.free_bytes,
        max_dataset_bytes=limit,
        clock=lambda: NOW,
    )
    drop = DropFolder.open(tmp_path / "var", receiver=receiver)
    for name in ("big.dcm", "small.dcm"):
        drop.mark_closed(drop.folder / name)
    parsed: list[object] = []
    real_read_partial = pydicom.filereader.read_partial

    def counting_read_partial(fileobj: object, *args: object, **kwargs: object) -> Dataset:
        parsed.append(getattr(fileobj, "name", fileobj))
        return real_read_partial(fileobj, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydicom.filereader, "read_partial", counting_read_partial)
    caplog.set_level(logging.INFO, logger="bonect")

    report = drop.ingest_once()

    assert report.rejected == (drop.rejected_folder / "big.dcm",)
    assert report.rejected[0].read_bytes() == big.read_bytes()  # moved whole, as dropped
    assert len(report.ingested) == 1 and len(parsed) == 1  # only small.dcm was parsed
    assert [r[3] for r in setup.sink.records] == ["import:small.dcm"]
    assert not (drop.folder / "big.dcm").exists() and not (drop.folder / "small.dcm").exists()
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"big.dcm is 0.1 MB ({limit + 1} bytes), over storage.max_dataset_mb" in line
    assert "moved to" in line
    assert "DROP-LIMIT" not in caplog.text and "Synthetic" not in caplog.text
