"""Shared fixtures of the end-to-end tests: `bonect-daemon start` between real DICOM peers.

The daemon runs as a subprocess (:class:`Daemon`) from a config in the contract's shape
(:func:`write_config`); DCMTK ``storescu`` sends to it and Orthanc (:class:`OrthancServer`)
receives its synthetic CT. The tests look at the daemon only from outside: its catalog, read
through a read-only SQLite connection (:class:`CatalogView`), its operator commands and its log.

Waiting on those external processes is a bounded poll (:func:`wait_for`), never a bare sleep.
Phantom series are made once per session; :func:`copy_series` derives further series from one
(new UIDs, edited headers) without rendering again.

(Over 400 lines: the daemon, Orthanc and catalog-view fixtures every e2e module imports;
each is a small class, kept in the conftest so pytest finds the fixtures without plugins.)
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context

from bonect.daemon.rejection import rejection_note_uids
from bonect.phantom.cohort import WrittenPatient, write_patient
from bonect.phantom.generate import Acquisition, generate_case
from dicom_peers import LOCALHOST, OrthancServer, free_port, have, peer_env, peer_program

DAEMON = Path(sys.executable).parent / "bonect-daemon"
PEERS_MISSING = not (have("storescu") and have("Orthanc"))
needs_peers = pytest.mark.skipif(
    PEERS_MISSING, reason="needs Debian's dcmtk and orthanc (make test installs them)"
)

#: The phantom every fault test sends: coarse, sagittal, 57 slices.
COARSE_SAGITTAL = Acquisition("sagittal", (4.0, 3.0, 3.0))
#: A longer series for faults that need time to strike (90 slices of 57 x 57).
THIN_AXIAL = Acquisition("axial", (3.0, 4.0, 4.0))
#: The throughput series: at least 300 slices (316 of 57 x 57).
SLICES_300 = Acquisition("axial", (0.85, 4.0, 4.0))

POLL_S = 0.05


# -- config ------------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_config(
    folder: Path,
    *,
    port: int,
    pacs_port: int,
    sections: Mapping[str, Mapping[str, object]] | None = None,
    pacs: Mapping[str, object] | None = None,
    destinations: Sequence[Mapping[str, object]] = (),
) -> Path:
    """Write ``folder/config.toml`` in the contract's shape; ``sections`` overrides keys.

    The defaults: quiet time 600 s (completion must come from release + geometry), the
    classical method on the CPU, no metrics endpoint, one destination ``pacs`` (AE ``PACS``),
    with the further keys ``pacs``, then the further ``destinations``.
    """
    config: dict[str, dict[str, object]] = {
        "node": {"ae_title": "BONECT", "host": LOCALHOST, "port": port},
        "storage": {"dir": "var", "reserve_mb": 1},
        "catalog": {"url": ""},
        "settle": {"quiet_seconds": 600},
        "converter": {
            "model": "auto",
            "planes": ["axial", "coronal", "sagittal"],
            "device": "cpu",
        },
        "metrics": {"enabled": False},
    }
    for name, keys in (sections or {}).items():
        config.setdefault(name, {}).update(keys)
    lines = []
    for name, keys in config.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
        lines.append("")
    lines += [
        "[[destinations]]",
        'name = "pacs"',
        'ae_title = "PACS"',
        f'host = "{LOCALHOST}"',
        f"port = {pacs_port}",
        *(f"{key} = {_toml_value(value)}" for key, value in (pacs or {}).items()),
        "",
    ]
    for destination in destinations:
        lines.append("[[destinations]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in destination.items()]
        lines.append("")
    path = folder / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# -- waiting -----------------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    *,
    timeout: float = 120.0,
    log: Path | None = None,
    interval: float = POLL_S,
) -> float:
    """Poll ``predicate`` until true (bounded: external processes); returns the seconds taken."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    tail = "" if log is None or not log.exists() else log.read_text(errors="replace")[-6000:]
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


# -- the daemon --------------------------------------------------------------------------------


class CatalogView:
    """The daemon's SQLite catalog, read-only, one short connection per query."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of ``sql``; none while the database does not exist yet."""
        if not self.path.exists():
            return []
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return list(connection.execute(sql, params))
        finally:
            connection.close()

    def scalar(self, sql: str, params: Sequence[object] = ()) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def instance_count(self, series_uid: str | None = None) -> int:
        if series_uid is None:
            return int(self.scalar("SELECT count(*) FROM instances") or 0)
        return int(
            self.scalar(
                "SELECT count(*) FROM instances i JOIN series s ON s.id = i.series_id "
                "WHERE s.series_uid = ?",
                (series_uid,),
            )
            or 0
        )

    def jobs(self, series_uid: str | None = None) -> list[dict[str, Any]]:
        """Every job (of a series), oldest first, as dicts of its columns."""
        sql = (
            "SELECT j.*, s.series_uid AS series_uid FROM jobs j JOIN series s ON s.id = j.series_id"
        )
        params: tuple[str, ...] = ()
        if series_uid is not None:
            sql += " WHERE s.series_uid = ?"
            params = (series_uid,)
        if not self.path.exists():
            return []
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in connection.execute(sql + " ORDER BY j.id", params)]
        finally:
            connection.close()

    def job_states(self, series_uid: str | None = None) -> list[str]:
        return [str(job["state"]) for job in self.jobs(series_uid)]

    def send_counts(self, job_id: int | None = None) -> dict[str, int]:
        """Sends by status (of one job, or of all)."""
        sql = "SELECT status, count(*) FROM sends"
        params: tuple[int, ...] = ()
        if job_id is not None:
            sql += " WHERE job_id = ?"
            params = (job_id,)
        return {str(s): int(n) for s, n in self.rows(sql + " GROUP BY status", params)}

    def sends(self, job_id: int) -> list[dict[str, Any]]:
        rows = self.rows(
            "SELECT sop_instance_uid, status, attempts, updated_at, path FROM sends "
            "WHERE job_id = ?",
            (job_id,),
        )
        keys = ("sop_instance_uid", "status", "attempts", "updated_at", "path")
        return [dict(zip(keys, row, strict=True)) for row in rows]


@dataclass
class Daemon:
    """``bonect-daemon start`` as a subprocess that can be killed and started again.

    Every start appends to one log file, so a failure shows the whole story.
    """

    folder: Path
    port: int
    pacs_port: int
    sections: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def config(self) -> Path:
        return self.folder / "config.toml"

    @property
    def log(self) -> Path:
        return self.folder / "daemon.log"

    def write_config(self, sections: Mapping[str, Mapping[str, object]] | None = None) -> Path:
        """(Re)write the config, with ``sections`` instead of the earlier overrides if given."""
        if sections is not None:
            self.sections = sections
        return write_config(
            self.folder, port=self.port, pacs_port=self.pacs_port, sections=self.sections
        )

    @property
    def catalog(self) -> CatalogView:
        return CatalogView(self.folder / "var" / "catalog.sqlite3")

    @property
    def storage(self) -> Path:
        return self.folder / "var"

    def start(self) -> Daemon:
        """Start the daemon and wait until it accepts TCP connections on its port."""
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"---- start {self.starts} ----\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [str(DAEMON), "--config", str(self.config), "start"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"bonect-daemon exited with {process.returncode}:\n" + self.log_text()
                )
            try:
                with socket.create_connection((LOCALHOST, self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(listening, "bonect-daemon to listen", timeout=60, log=self.log)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies at once, whatever it was doing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run an operator command (``status``, ``jobs``...) against the same config."""
        return subprocess.run(
            [str(DAEMON), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 180.0) -> float:
        return wait_for(predicate, what, timeout=timeout, log=self.log)

    def wait_delivered(self, pacs: OrthancServer, series: Series, timeout: float = 180.0) -> float:
        """Wait until the job of ``series`` is done and its sCT is at ``pacs``."""
        return self.wait_for(
            delivered(pacs, self.catalog, series.series_uid, len(series)),
            f"the sCT of {series.series_uid} at Orthanc",
            timeout,
        )


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """A factory: ``start_daemon(pacs_port=..., sections={...}, start=True)``; all killed after."""
    daemons: list[Daemon] = []

    def start(
        *,
        pacs_port: int,
        sections: Mapping[str, Mapping[str, object]] | None = None,
        start: bool = True,
    ) -> Daemon:
        folder = tmp_path / f"node{len(daemons)}" if daemons else tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        daemon = Daemon(folder=folder, port=free_port(), pacs_port=pacs_port)
        daemon.write_config(sections or {})
        daemons.append(daemon)
        return daemon.start() if start else daemon

    yield start
    for daemon in daemons:  # a test that cares about a clean stop checks it itself
        if daemon.alive:
            daemon.kill()


class DisposablePacs(OrthancServer):
    """Orthanc as the tests' PACS: thrown away at the end, so killed rather than stopped
    (a graceful stop takes Orthanc about 3 s)."""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        super().stop()


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[OrthancServer]:
    """An Orthanc PACS (AE ``PACS``) that accepts stores from ``BONECT``."""
    with DisposablePacs(tmp_path / "orthanc", allowed_aets=("BONECT",)) as server:
        yield server


class OrthancOnPort(DisposablePacs):
    """Orthanc on a DICOM port chosen before it starts (to bring a PACS up late)."""

    def __init__(self, folder: Path, *, dicom_port: int, **kwargs: Any) -> None:
        super().__init__(folder, **kwargs)
        self._chosen_port = dicom_port

    def config(self) -> dict[str, Any]:
        self.dicom_port = self._chosen_port  # start() drew a free one; keep ours
        return super().config()


# -- sending to the daemon --------------------------------------------------------------------


def storescu_background(
    port: int, paths: Sequence[Path], *, calling_ae: str = "STORESCU"
) -> subprocess.Popen[str]:
    """DCMTK ``storescu`` of ``paths`` on one association, left running; read its exit later."""
    return subprocess.Popen(
        [str(peer_program("storescu")), "-aet", calling_ae, "-aec", "BONECT", LOCALHOST, str(port)]
        + [str(p) for p in paths],
        env=peer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def store_datasets(
    port: int, datasets: Sequence[Dataset], *, calling_ae: str = "MODALITY"
) -> list[int]:
    """C-STORE ``datasets`` with a pynetdicom SCU on one association; their statuses.

    For datasets DCMTK would not send (hostile UIDs): pynetdicom encodes what it is given.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    pairs = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    contexts = [build_context(sop_class, [ts]) for sop_class, ts in sorted(pairs)]
    assoc = ae.associate(LOCALHOST, port, contexts=contexts, ae_title="BONECT")
    assert assoc.is_established, "the daemon refused the association"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        if assoc.is_established:
            assoc.release()


# -- what reached the PACS ---------------------------------------------------------------------


def synthetic_series(pacs: OrthancServer) -> list[str]:
    """Orthanc ids of the CT series whose description says synthetic CT."""
    found = []
    for series_id in pacs.series():
        tags = pacs.series_tags(series_id)
        if tags.get("Modality") == "CT" and "Synthetic" in tags.get("SeriesDescription", ""):
            found.append(series_id)
    return found


def rejection_notes(pacs: OrthancServer) -> list[Dataset]:
    """Every Key Object Selection Document Orthanc holds (the IOCM rejection notes)."""
    notes = []
    for series_id in pacs.series():
        tags = pacs.series_tags(series_id)
        if tags.get("Modality") == "KO":
            notes += [pydicom.dcmread(BytesIO(pacs.instance_file(i))) for i in tags["Instances"]]
    return notes


def sct_complete(pacs: OrthancServer, n_slices: int) -> Callable[[], bool]:
    """A predicate: an sCT series at Orthanc holds ``n_slices`` instances."""

    def complete() -> bool:
        found = synthetic_series(pacs)
        return any(len(pacs.series_tags(s)["Instances"]) >= n_slices for s in found)

    return complete


def delivered(
    pacs: OrthancServer, catalog: CatalogView, series_uid: str, n_slices: int
) -> Callable[[], bool]:
    """A predicate: the job of MR ``series_uid`` is done and its sCT is at Orthanc."""
    at_pacs = sct_complete(pacs, n_slices)

    def done() -> bool:
        states = catalog.job_states(series_uid)
        return bool(states) and states[-1] == "done" and at_pacs()

    return done


def done_job(catalog: CatalogView, series_uid: str) -> dict[str, Any]:
    """The latest job of ``series_uid``, asserting that it is done.

    A series re-opened by instances arriving after it settled has more than one job, one per
    generation; the latest one's output (UIDs of its own) replaced the earlier ones.
    """
    jobs = catalog.jobs(series_uid)
    assert jobs and jobs[-1]["state"] == "done", jobs
    return jobs[-1]


def assert_pacs_holds_exactly(
    pacs: OrthancServer,
    catalog: CatalogView,
    mr_series_uids: Sequence[str],
    n_slices: Sequence[int],
) -> None:
    """Nothing lost, nothing duplicated: Orthanc holds one sCT series per converted MR series,
    one instance per MR slice, and its SOP Instance UIDs are exactly those the daemon sent."""
    expected: set[str] = set()
    for series_uid, n in zip(mr_series_uids, n_slices, strict=True):
        job = done_job(catalog, series_uid)
        sends = catalog.sends(job["id"])
        assert len(sends) == n, f"{len(sends)} sends planned for {n} MR slices"
        assert {s["status"] for s in sends} == {"stored"}, sends
        expected |= {s["sop_instance_uid"] for s in sends}
    assert len(expected) == sum(n_slices)
    uids = pacs.sop_instance_uids()
    assert len(uids) == len(set(uids)), "an instance is duplicated at the PACS"
    assert set(uids) == expected
    found = synthetic_series(pacs)
    assert len(found) == len(mr_series_uids)
    assert sorted(len(pacs.series_tags(s)["Instances"]) for s in found) == sorted(n_slices)


def assert_pacs_holds_a_replacement(
    pacs: OrthancServer, catalog: CatalogView, series_uid: str, n_slices: int
) -> list[Dataset]:
    """A re-opened series at the PACS: its newest sCT series complete with the newest pixels,
    under UIDs no earlier generation used (so no instance carries stale pixels under a reused
    UID); each earlier generation's instances as they were stored, and its rejection note
    referencing exactly them; nothing else, nothing twice; the earlier outputs gone from our
    archive. Returns the rejection notes found."""
    *earlier, latest = catalog.jobs(series_uid)
    assert earlier and latest["state"] == "done", catalog.jobs(series_uid)
    newest = {s["sop_instance_uid"] for s in catalog.sends(latest["id"])}
    assert len(newest) == n_slices
    assert {s["status"] for s in catalog.sends(latest["id"])} == {"stored"}
    notes = {str(n.SOPInstanceUID): n for n in rejection_notes(pacs)}
    expected = newest | set(notes)
    for job in earlier:
        assert job["state"] in ("done", "superseded"), job
        assert job["output_dir"] is None or not Path(job["output_dir"]).exists()
        note_series, note_uid = rejection_note_uids(job["output_series_uid"])
        sends = catalog.sends(job["id"])
        images = {s["sop_instance_uid"] for s in sends if s["sop_instance_uid"] != note_uid}
        assert not images & newest, "a UID of an earlier generation was used again"
        if not any(s["attempts"] for s in sends):
            continue  # never sent: nothing to withdraw at the PACS
        note = notes.pop(note_uid)
        assert str(note.SeriesInstanceUID) == note_series
        assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
        (evidence,) = note.CurrentRequestedProcedureEvidenceSequence
        (rejected,) = evidence.ReferencedSeriesSequence
        assert rejected.SeriesInstanceUID == job["output_series_uid"]
        assert {i.ReferencedSOPInstanceUID for i in rejected.ReferencedSOPSequence} == images
        expected |= {s["sop_instance_uid"] for s in sends if s["status"] == "stored"}
    assert notes == {}, "a rejection note of no earlier generation"
    uids = pacs.sop_instance_uids()
    assert len(uids) == len(set(uids)), "an instance is duplicated at the PACS"
    assert set(uids) == expected
    counts = {}
    for series_id in synthetic_series(pacs):
        tags = pacs.series_tags(series_id)
        counts[tags["SeriesInstanceUID"]] = len(tags["Instances"])
    assert counts[latest["output_series_uid"]] == n_slices
    assert_pacs_content_is_the_latest(pacs, catalog, series_uid)
    return rejection_notes(pacs)


def stale_at_pacs(pacs: OrthancServer, catalog: CatalogView, series_uid: str) -> list[str]:
    """SOP Instance UIDs whose pixels at Orthanc differ from the latest job's output file."""
    job = done_job(catalog, series_uid)
    ours = {s["sop_instance_uid"]: Path(s["path"]) for s in catalog.sends(job["id"])}
    stale = []
    for item in pacs.get("/instances?expand"):
        uid = str(item["MainDicomTags"]["SOPInstanceUID"])
        if uid not in ours:
            continue
        at_pacs = pydicom.dcmread(BytesIO(pacs.instance_file(item["ID"])))
        if at_pacs.PixelData != pydicom.dcmread(ours[uid]).PixelData:
            stale.append(uid)
    return stale


def assert_pacs_content_is_the_latest(
    pacs: OrthancServer, catalog: CatalogView, series_uid: str
) -> None:
    """Every sCT instance at Orthanc carries the pixels of the latest job's output file."""
    stale = stale_at_pacs(pacs, catalog, series_uid)
    assert not stale, f"{len(stale)} instances at the PACS are not the latest output"


# -- series ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """A series on disk: its files (slice order) and Series Instance UID."""

    files: tuple[Path, ...]
    series_uid: str

    @classmethod
    def of(cls, files: Sequence[Path]) -> Series:
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        return cls(tuple(files), str(header.SeriesInstanceUID))

    def __len__(self) -> int:
        return len(self.files)


def copy_series(
    source: Series,
    out: Path,
    *,
    edit: Callable[[int, Dataset], None] | None = None,
    keep: Callable[[int], bool] | None = None,
    **attributes: object,
) -> Series:
    """A copy of ``source`` as a new series (new Series and SOP Instance UIDs) in ``out``.

    ``attributes`` are set on every instance; ``edit(k, ds)`` may change instance ``k``
    further; ``keep(k)`` False leaves instance ``k`` out.
    """
    out.mkdir(parents=True)
    series_uid = generate_uid()
    paths = []
    for k, path in enumerate(source.files):
        if keep is not None and not keep(k):
            continue
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        if edit is not None:
            edit(k, ds)
        paths.append(out / path.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    return Series(tuple(paths), series_uid)


@pytest.fixture(scope="session")
def coarse_patient(tmp_path_factory: pytest.TempPathFactory) -> WrittenPatient:
    """A phantom patient: a coarse sagittal bone MR (57 slices) and an axial CT."""
    case = generate_case(
        41, 0, acquisition=COARSE_SAGITTAL, ct_acquisition=Acquisition("axial", (4.0, 3.0, 3.0))
    )
    return write_patient(case, 41, tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="session")
def coarse_mr(coarse_patient: WrittenPatient) -> Series:
    return Series.of(sorted(coarse_patient.mr_dicom.glob("*.dcm")))


@pytest.fixture(scope="session")
def thin_mr(tmp_path_factory: pytest.TempPathFactory) -> Series:
    """A longer bone-MR series (90 slices), for faults that need time to strike."""
    case = generate_case(42, 0, acquisition=THIN_AXIAL, ct_acquisition=None)
    written = write_patient(case, 42, tmp_path_factory.mktemp("phantom_thin"))
    return Series.of(sorted(written.mr_dicom.glob("*.dcm")))
