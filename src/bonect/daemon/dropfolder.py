"""The drop folder: DICOM files copied into ``<storage dir>/import/`` are ingested as if C-STOREd.

Each complete file is read once and goes through the same receive path as a C-STORE,
:meth:`~bonect.daemon.receive.Receiver.receive` (association id ``"import:<name>"``, ``<name>``
being its path relative to the folder), and is removed once recorded. A file the receive path
cannot understand (0xC210: not DICOM Part 10, invalid UIDs) or that does not match its SOP class
(0xA900) is moved to ``import/rejected/`` with a log line that says why, and so is a file larger
than the receive path's ``max_dataset_bytes`` (``[storage] max_dataset_mb``, a C-STORE's limit):
judged by its size before it is read, and never read past the limit should it grow meanwhile.
A file refused for lack of resources (0xA700: the disk reserve, the archive or the catalog)
stays where it is and is tried again at the next scan.

A file is complete when it was closed after writing (watchdog's ``FileClosedEvent``, or moved
into the folder), or when its size and modification time have not changed since the previous
scan. :meth:`DropFolder.ingest_once` is one synchronous scan (tests call it directly);
:meth:`DropFolder.start` runs a watchdog observer whose events, and a periodic rescan, trigger
it on a background thread. Hidden files (a name starting with ``.``) are left alone: copy
tools write their temporaries that way.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from bonect.daemon.receive import OUT_OF_RESOURCES, Receiver

logger = logging.getLogger(__name__)

IMPORT = "import"
REJECTED = "rejected"
ASSOCIATION_PREFIX = "import:"


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one scan did."""

    ingested: tuple[str, ...]  # SOP Instance UIDs archived and recorded (files removed)
    rejected: tuple[Path, ...]  # where the non-DICOM files now are
    waiting: int  # files maybe still being copied
    kept: int  # files refused for lack of resources now (retried next scan)


class DropFolder:
    """The ``import`` folder of a storage dir; build it with :meth:`open`."""

    def __init__(self, folder: Path, *, receiver: Receiver) -> None:
        self._folder = folder
        self._rejected = folder / REJECTED
        self._receiver = receiver
        self._seen: dict[Path, tuple[int, int]] = {}
        self._closed: set[Path] = set()
        self._lock = threading.Lock()  # one scan at a time; guards _seen
        self._closed_lock = threading.Lock()  # guards _closed (watchdog thread vs scans)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, storage_dir: Path, *, receiver: Receiver) -> DropFolder:
        """Open ``<storage_dir>/import`` (creating it and ``rejected/`` if needed)."""
        folder = (storage_dir / IMPORT).resolve()
        (folder / REJECTED).mkdir(parents=True, exist_ok=True)
        return cls(folder, receiver=receiver)

    @property
    def folder(self) -> Path:
        """The folder files are dropped into."""
        return self._folder

    @property
    def rejected_folder(self) -> Path:
        """Where files that are not usable DICOM end up."""
        return self._rejected

    def mark_closed(self, path: Path) -> None:
        """Note that ``path`` was closed after writing: it is complete, take it at next scan."""
        path = path.resolve()
        if not path.is_relative_to(self._folder) or path.is_relative_to(self._rejected):
            return
        with self._closed_lock:
            self._closed.add(path)

    def ingest_once(self) -> IngestReport:
        """Scan the folder once and ingest every complete file."""
        with self._lock:
            return self._scan()

    def _candidates(self) -> list[Path]:
        found = []
        for path in sorted(self._folder.rglob("*")):
            relative = path.relative_to(self._folder).parts
            if relative[0] == REJECTED or any(part.startswith(".") for part in relative):
                continue
            if path.is_file() and not path.is_symlink():
                found.append(path)
        return found

    def _scan(self) -> IngestReport:
        ingested: list[str] = []
        rejected: list[Path] = []
        waiting = kept = 0
        candidates = self._candidates()
        with self._closed_lock:
            closed = set(self._closed)
        done: set[Path] = set()
        for path in candidates:
            try:
                st = path.stat()
            except OSError:
                continue  # gone meanwhile
            key = (st.st_size, st.st_mtime_ns)
            if path not in closed and self._seen.get(path) != key:
                self._seen[path] = key
                waiting += 1
                continue
            outcome = self._ingest(path)
            if isinstance(outcome, str):
                ingested.append(outcome)
            elif isinstance(outcome, Path):
                rejected.append(outcome)
            else:
                kept += 1
                continue  # keep it ready: retried at the next scan
            self._seen.pop(path, None)
            done.add(path)
        present = set(candidates)
        self._seen = {p: k for p, k in self._seen.items() if p in present}
        with self._closed_lock:
            self._closed = {p for p in self._closed if p not in done and p.exists()}
        if ingested or rejected:
            logger.info("import: %d ingested, %d rejected", len(ingested), len(rejected))
        return IngestReport(tuple(ingested), tuple(rejected), waiting, kept)

    def _ingest(self, path: Path) -> str | Path | None:
        """The SOP Instance UID when ingested, the new path when rejected, None when kept."""
        name = path.relative_to(self._folder).as_posix()
        limit = self._receiver.max_dataset_bytes
        try:
            size = path.stat().st_size
            encoded = b"" if size > limit else _read_at_most(path, limit + 1)
        except OSError:
            logger.exception("import: cannot read %s", name)
            return None
        if size > limit or len(encoded) > limit:
            size = max(size, len(encoded))
            mb = 1024 * 1024
            return self._reject(
                path,
                name,
                f"is {size / mb:.1f} MB ({size} bytes), over storage.max_dataset_mb "
                f"({limit / mb:g} MB)",
            )
        association_id = ASSOCIATION_PREFIX + name
        receipt = self._receiver.receive(
            lambda: dcmread(io.BytesIO(encoded), stop_before_pixels=True),  # the one read
            lambda: encoded,
            association_id=association_id,
        )
        if receipt.status == OUT_OF_RESOURCES:
            logger.warning("import: %s waits for the next scan: %s", name, receipt.reason)
            return None
        if not receipt.ok or receipt.header is None:
            return self._reject(path, name, f"is not usable DICOM ({receipt.reason})")
        self._receiver.association_ended(association_id)
        try:
            path.unlink()
        except OSError:  # ingested again next scan: harmless, the same file is replaced
            logger.exception("import: could not remove %s", name)
        return receipt.header.sop_instance_uid

    def _reject(self, path: Path, name: str, why: str) -> Path | None:
        """Move ``path`` to ``rejected/``; one log line: ``import: <name> <why>; moved to ...``."""
        base = name.replace("/", "_")
        target = self._rejected / base
        n = 0
        while target.exists():
            n += 1
            target = self._rejected / f"{base}.{n}"
        try:
            os.replace(path, target)
        except OSError:
            logger.exception("import: cannot move %s to %s", name, self._rejected)
            return None
        logger.warning("import: %s %s; moved to %s", name, why, target)
        return target

    def start(self, *, rescan_seconds: float = 2.0) -> None:
        """Watch the folder (watchdog) and ingest on a background thread until :meth:`stop`."""
        if self._thread is not None:
            raise RuntimeError("the drop folder is already watched")
        self._stopping.clear()
        observer = Observer()
        observer.schedule(
            _Trigger(self),
            str(self._folder),
            recursive=True,
            event_filter=[FileClosedEvent, FileCreatedEvent, FileModifiedEvent, FileMovedEvent],
        )
        observer.start()
        self._observer = observer
        self._thread = threading.Thread(
            target=self._run, args=(rescan_seconds,), name="bonect-import", daemon=True
        )
        self._thread.start()
        self._wake.set()  # take what was dropped while we were not running
        logger.info("watching %s", self._folder)

    def _run(self, rescan_seconds: float) -> None:
        while not self._stopping.is_set():
            self._wake.wait(rescan_seconds)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.ingest_once()
            except Exception:  # keep watching whatever one scan met
                logger.exception("import: scan failed")

    def wake(self) -> None:
        """Ask the background thread for a scan now."""
        self._wake.set()

    def stop(self) -> None:
        """Stop watching; waits for a scan in progress to end."""
        self._stopping.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _read_at_most(path: Path, limit: int) -> bytes:
    """The first ``limit`` bytes of ``path`` (all of it when it is shorter)."""
    with path.open("rb") as f:
        return f.read(limit)


class _Trigger(FileSystemEventHandler):
    """Watchdog events only wake the scanning thread (and mark files closed after writing)."""

    def __init__(self, drop: DropFolder) -> None:
        self._drop = drop

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            self._drop.mark_closed(Path(os.fsdecode(event.src_path)))
        elif isinstance(event, FileMovedEvent):
            self._drop.mark_closed(Path(os.fsdecode(event.dest_path)))
        self._drop.wake()
