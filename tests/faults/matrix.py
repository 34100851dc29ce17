"""The fault matrix: `bonect-daemon start` killed (SIGKILL) at a seeded random moment of each
stage, started again, and the outcome counted at the PACS.

One run of a stage starts a fresh Orthanc and a fresh daemon (classical method, so a conversion
takes seconds), sends a bone-MR series (a copy with UIDs of its own, ImagesInAcquisition set as
scanners do), kills the daemon at the drawn moment of the stage, which it detects from outside
(the catalog, read-only, and the daemon's own process), starts it again, does what a modality
would do (re-send a series whose association failed), waits up to a deadline, and counts:

* **lost**: bone-MR instances not in the catalog at the end or, after the restart, fewer than
  storescu saw answered success before the kill; plus sCT instances missing from the
  delivered sCT series (for the prior stage, also CT instances not retrieved);
* **duplicated**: sCT series at the PACS beyond one per MR series, plus instances stored twice;
* **missing**: MR series with no complete sCT series at the PACS;
* **stuck**: jobs (and prior tasks) neither done nor failed when the deadline passes.

The stages: ``receive`` (storescu mid-series), ``settle`` (after the last instance was stored,
before the job is claimed: the modality holds its association open for a drawn time before
it releases it, and the kill falls in that time or just after the release), ``convert`` (a
drawn fraction of the conversion's duration after the claim: the median, claim to first sCT
stored, of the conversions earlier runs made after their restart, or of one unfaulted run when
there is none yet), ``half_written`` (after a drawn number, at most a tenth, of the sCT
instances were stored while the series was still being written: the sender drains what the
writer has written so far; in stage only if the job was not yet marked written at the kill),
``send`` (after a drawn number of sCT instances were stored) and ``prior``
(a C-MOVE of a CT from Orthanc cut after a drawn number of instances). Two further faults,
without a kill: ``pacs_status`` (a pynetdicom storage SCP stands in for the PACS and answers
0xA700 or 0xC000 to the first attempt of a drawn 10-50 % of the instances) and ``catalog_lock``
(another process holds ``BEGIN EXCLUSIVE`` on the catalog for a drawn few seconds while the
series arrives). And one with a kill of the PACS: ``pacs_down`` (Orthanc is killed after a drawn
number of sCT instances were stored, or when the job is claimed, before its sCT is ready; it
stays down ``pacs_down_s``, 2 min by default, and comes back on the same port and storage; the
sender retries with its backoff meanwhile).

Each run draws from ``random.Random(f"{seed}:{stage}:{run}")``, so a seed replays a run's
moments. ``tests/e2e/test_fault_matrix.py`` runs one run per stage on a small series;
``tests/faults/run.py`` runs ``--runs`` per stage on a ``--slices`` series and prints the table.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from bonect.dicom.network import set_nodelay
from dicom_peers import LOCALHOST, OrthancServer, free_port, peer_env, peer_program, storescu
from e2e.conftest import (
    CatalogView,
    Daemon,
    DisposablePacs,
    OrthancOnPort,
    Series,
    copy_series,
    storescu_background,
    synthetic_series,
)
from e2e.priors_support import QueryRetrievePacs, add_source, prior_series

logger = logging.getLogger("faults")

KILL_STAGES = ("receive", "settle", "convert", "half_written", "send", "prior")
OTHER_FAULTS = ("pacs_status", "catalog_lock", "pacs_down")
STAGES = KILL_STAGES + OTHER_FAULTS

#: The matrix's daemon: the classical method (fast), quick send retries, no C-ECHO watch.
SECTIONS: dict[str, dict[str, object]] = {
    "converter": {"model": "classical"},
    "sender": {"retry_initial_seconds": 1, "retry_max_seconds": 4, "echo_interval_seconds": 0},
}
TERMINAL = ("done", "failed", "superseded")
PRIOR_TERMINAL = ("done", "none_found", "failed")
FAST_POLL_S = 0.01  # the kill-moment polls: the catalog answers in about a millisecond
REFUSAL_STATUSES = (0xA700, 0xC000)  # out of resources, cannot understand


@dataclass
class RunResult:
    """One run of one stage: the drawn moment, where it fell, and the figures."""

    stage: str
    run: int
    seed: int
    moment: str  # the drawn kill (or fault) moment, as drawn
    landed: str  # where the daemon stood at that moment, observed from outside
    in_stage: bool = True  # the kill (or fault) fell in the stage it is meant for
    lost: int = 0
    duplicated: int = 0
    missing: int = 0
    stuck: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str = ""  # the run broke (the daemon died, a precondition never came): why

    @property
    def clean(self) -> bool:
        """Nothing lost, duplicated, missing or stuck (and the run did not break)."""
        return self.lost == self.duplicated == self.missing == self.stuck == 0 and not self.error

    def outside(self, why: str) -> None:
        """The fault fell outside its stage (a race of the outside poll): say where."""
        self.in_stage = False
        self.notes.append(why)

    def line(self) -> str:
        return (
            f"{self.stage} run {self.run} (seed {self.seed}): moment {self.moment}; landed "
            f"{self.landed}; lost {self.lost}, duplicated {self.duplicated}, missing "
            f"{self.missing}, stuck {self.stuck}; {self.seconds:.1f} s"
            + (f"; {'; '.join(self.notes)}" if self.notes else "")
            + (f"; BROKE: {self.error}" if self.error else "")
        )


@dataclass
class Matrix:
    """The series and settings shared by every run."""

    mr: Series  # the bone-MR series each run copies (new UIDs)
    work: Path  # one sub-folder per run
    seed: int
    prior_slices: int = 100  # the CT at the source PACS for the prior stage
    deadline_s: float = 180.0  # after the restart: later than this, a job is stuck
    pacs_down_s: float = 120.0  # the pacs_down stage: how long the PACS stays down
    keep: bool = False  # keep each run's folder (logs, catalog, Orthanc)
    transport: str = "pynetdicom"  # [sender] transport of the daemon under test
    # seen in the unfaulted conversions of earlier runs (each run's last job, converted in one
    # go after the restart): claim to first sCT stored, and association release to claim
    convert_s: list[float] = field(default_factory=list)
    settle_s: list[float] = field(default_factory=list)

    @property
    def sections(self) -> dict[str, dict[str, object]]:
        """The daemon's config sections for this matrix."""
        return {**SECTIONS, "sender": {**SECTIONS["sender"], "transport": self.transport}}

    def rng(self, stage: str, run: int) -> random.Random:
        return random.Random(f"{self.seed}:{stage}:{run}")

    def run(self, stage: str, run: int) -> RunResult:
        """One run of ``stage``: fault, restart, outcome."""
        folder = self.work / f"{stage}-{run}"
        folder.mkdir(parents=True)
        rng = self.rng(stage, run)
        started = time.monotonic()
        result = RunResult(stage, run, self.seed, "", "")
        try:
            result = RUNNERS[stage](self, folder, rng, result)
        except Exception as exc:  # one broken run is a figure of the table, not the end of it
            logger.exception("%s run %d broke", stage, run)
            result.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        result.seconds = time.monotonic() - started
        log = folder / "daemon.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        errors = [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line]
        if errors:
            result.notes.append(f"{len(errors)} ERROR line(s) in the log, first: {errors[0]}")
        parts = list((folder / "var").rglob("*.part"))
        if parts:
            result.notes.append(f"{len(parts)} .part file(s) left in the storage folder")
        logger.info("%s", result.line())
        if not self.keep and result.clean:
            _remove(folder)
        return result

    def convert_window(self) -> float:
        """How long a conversion takes here: claim to first sCT stored (median seen so far;
        one unfaulted run first when none was seen)."""
        if not self.convert_s:
            self.calibrate()
        return max(statistics.median(self.convert_s), 0.05)

    def settle_window(self) -> float:
        """Association release to job claimed (median seen so far; 50 ms before any)."""
        return statistics.median(self.settle_s) if self.settle_s else 0.05

    def calibrate(self) -> None:
        """An unfaulted run, to see how long a conversion takes."""
        folder = self.work / f"calibration-{len(self.convert_s)}"
        folder.mkdir(parents=True)
        mr = self.copy(folder)
        with _pacs(folder) as pacs, _daemon(folder, pacs.dicom_port, self.sections) as daemon:
            _send_whole(daemon, mr)
            _settle_outcome(RunResult("calibration", 0, self.seed, "", ""), self, daemon, pacs, mr)
        if not self.convert_s:
            raise AssertionError(f"no conversion seen in an unfaulted run:\n{daemon.log_text()}")
        if not self.keep:
            _remove(folder)

    def observe(self, catalog: CatalogView, series_uid: str) -> None:
        """Note the durations of the series' last job if it converted after its last claim."""
        jobs = catalog.jobs(series_uid)
        if not jobs or jobs[-1]["state"] != "done":
            return
        job = jobs[-1]
        if "convert" not in json.loads(job["timings"] or "{}"):
            return  # it sent an output converted before the kill
        claimed = str(job["claimed_at"])
        # sends stored before this claim (by the attempt a kill cut short) are not its own
        first = catalog.scalar(
            "SELECT min(updated_at) FROM sends"
            " WHERE job_id = ? AND status = 'stored' AND updated_at >= ?",
            (job["id"], claimed),
        )
        if first is None:
            return
        self.convert_s.append(_seconds_between(claimed, str(first)))
        released = catalog.scalar(
            "SELECT association_released_at FROM series WHERE series_uid = ?", (series_uid,)
        )
        if released is not None and str(released) <= claimed:
            self.settle_s.append(_seconds_between(str(released), claimed))

    def copy(self, folder: Path) -> Series:
        """This run's bone MR: the matrix's series under new UIDs, ImagesInAcquisition set."""
        n = len(self.mr)
        return copy_series(self.mr, folder / "mr", ImagesInAcquisition=n)


# -- the daemon and the PACS of one run --------------------------------------------------------


@contextmanager
def _pacs(folder: Path) -> Iterator[OrthancServer]:
    with DisposablePacs(folder / "orthanc", allowed_aets=("BONECT",)) as pacs:
        yield pacs


@contextmanager
def _daemon(
    folder: Path,
    pacs_port: int,
    sections: dict[str, dict[str, object]],
    *,
    start: bool = True,
) -> Iterator[Daemon]:
    daemon = Daemon(folder=folder, port=free_port(), pacs_port=pacs_port)
    daemon.write_config(sections)
    try:
        yield daemon.start() if start else daemon
    finally:
        if daemon.alive:
            daemon.kill()


def _wait(predicate: Callable[[], bool], timeout: float, daemon: Daemon, what: str) -> bool:
    """Poll ``predicate`` for up to ``timeout`` s (fast); False when it never held. A dead
    daemon (it should not die but by our kill) raises with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if daemon.process is not None and daemon.process.poll() is not None:
            raise AssertionError(
                f"the daemon died waiting for {what}:\n{daemon.log_text()[-4000:]}"
            )
        time.sleep(FAST_POLL_S)
    return predicate()


def _send_whole(daemon: Daemon, mr: Series) -> None:
    sent = storescu(daemon.port, mr.files, timeout=600)
    if sent.returncode != 0:
        raise AssertionError(f"storescu failed: {sent.stderr[-2000:]}")


def _send_counts(catalog: CatalogView) -> dict[str, int]:
    counts: dict[str, int] = catalog.send_counts()
    return counts


def _seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def _job_phase(catalog: CatalogView, series_uid: str) -> str:
    """Where a series stood: its job's state and sends, or its settle state without a job."""
    jobs = catalog.jobs(series_uid)
    if not jobs:
        released = catalog.scalar(
            "SELECT association_released_at IS NOT NULL FROM series WHERE series_uid = ?",
            (series_uid,),
        )
        return "no job yet (released)" if released in (1, True) else "no job yet"
    job = jobs[-1]
    counts = catalog.send_counts(job["id"])
    stored = counts.get("stored", 0)
    total = sum(counts.values())
    return f"job {job['state']}" + (f", {stored}/{total} stored" if total else "")


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# -- the outcome -------------------------------------------------------------------------------


def _settle_outcome(
    result: RunResult, matrix: Matrix, daemon: Daemon, pacs: OrthancServer, mr: Series
) -> RunResult:
    """Wait for the series' jobs to end and its sCT to be complete at ``pacs``; then count."""
    catalog, n = daemon.catalog, len(mr)

    def finished() -> bool:
        states = catalog.job_states(mr.series_uid)
        if not states or any(s not in TERMINAL for s in states):
            return False
        return _largest_sct(pacs) >= n or states[-1] == "failed"

    _wait(finished, matrix.deadline_s, daemon, "the jobs to end")
    states = catalog.job_states(mr.series_uid)
    result.stuck += sum(s not in TERMINAL for s in states) + (0 if states else 1)
    result.lost += max(0, n - catalog.instance_count(mr.series_uid))
    sct = _sct_series_sizes(pacs)
    if not any(size >= n for size in sct.values()):
        result.missing += 1
        if sct:  # a cut sCT series arrived: the instances it lacks are lost
            result.lost += n - max(sct.values())
    result.duplicated += max(0, len(sct) - 1)
    uids = pacs.sop_instance_uids()
    result.duplicated += len(uids) - len(set(uids))
    if len(states) > 1:
        result.notes.append(f"{len(states)} jobs: {states}")
    if states and states[-1] == "failed":
        result.notes.append(f"failed: {catalog.jobs(mr.series_uid)[-1]['last_error']}")
    matrix.observe(catalog, mr.series_uid)
    return result


def _sct_series_sizes(pacs: OrthancServer) -> dict[str, int]:
    """Synthetic-CT series at ``pacs``: Series Instance UID -> instance count."""
    sizes = {}
    for series_id in synthetic_series(pacs):
        tags = pacs.series_tags(series_id)
        sizes[str(tags["SeriesInstanceUID"])] = len(tags["Instances"])
    return sizes


def _largest_sct(pacs: OrthancServer) -> int:
    return max(_sct_series_sizes(pacs).values(), default=0)


# -- the stages --------------------------------------------------------------------------------


def run_receive(matrix: Matrix, folder: Path, rng: random.Random, result: RunResult) -> RunResult:
    """Killed while storescu sends the series; the modality sends it again after."""
    mr = matrix.copy(folder)
    n = len(mr)
    k = rng.randint(1, max(1, int(0.9 * n)))
    result.moment = f"instance {k}/{n}"
    with _pacs(folder) as pacs, _daemon(folder, pacs.dicom_port, matrix.sections) as daemon:
        passes = max(1, 200 // n)  # a short series over and over: still sending at the kill
        sending = _storescu_verbose(daemon.port, list(mr.files) * passes)
        catalog = daemon.catalog
        if not _wait(lambda: catalog.instance_count() >= k, 300, daemon, "the k-th instance"):
            raise AssertionError(f"instance {k} never arrived:\n{daemon.log_text()[-4000:]}")
        daemon.kill()
        stdout, stderr = sending.communicate(timeout=60)
        # storescu sends the files in order: the first min(acknowledged, n) were answered
        # success, so the catalog must hold them after the restart, before any resend
        acknowledged = min(n, (stdout + stderr).count("Received Store Response (Success)"))
        at_kill = catalog.instance_count()
        result.landed = (
            f"{at_kill}/{n} received ({acknowledged} acknowledged), "
            f"storescu exit {sending.returncode}"
        )
        if sending.returncode == 0:
            result.outside("storescu finished before the kill: not a receive fault")
        daemon.start()
        kept = catalog.instance_count(mr.series_uid)
        if kept < acknowledged:
            result.lost += acknowledged - kept
            result.notes.append(f"{acknowledged - kept} acknowledged instance(s) not kept")
        _send_whole(daemon, mr)  # as a modality does after a failed association
        return _settle_outcome(result, matrix, daemon, pacs, mr)


def _storescu_verbose(port: int, paths: Sequence[Path]) -> subprocess.Popen[str]:
    """DCMTK ``storescu -v`` in the background: it prints one line per success answered."""
    program = peer_program("storescu")
    if program is None:
        raise AssertionError("DCMTK storescu is not installed")
    args = [program, "-v", "-aet", "STORESCU", "-aec", "BONECT", LOCALHOST, str(port)]
    return subprocess.Popen(
        [*args, *(str(p) for p in paths)],
        env=peer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _store(assoc: Association, path: Path) -> int:
    """C-STORE ``path``; sent again (same UID) when pynetdicom loses the response (a stall
    FIELD-NOTES.md describes), as a modality would."""
    for _ in range(3):
        status = assoc.send_c_store(path).get("Status")
        if status is not None or not assoc.is_established:
            break
    return -1 if status is None else int(status)


def _hold_association(
    port: int, files: Sequence[Path], hold_s: float, sent: threading.Event, out: dict[str, Any]
) -> None:
    """A modality that stores every file, keeps its association open ``hold_s``, releases."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    header = dcmread(files[0], stop_before_pixels=True)
    context = build_context(header.SOPClassUID, [header.file_meta.TransferSyntaxUID])
    nodelay: list[Any] = [(evt.EVT_CONN_OPEN, set_nodelay)]  # Nagle costs 10-80x here
    assoc = ae.associate(
        LOCALHOST, port, contexts=[context], ae_title="BONECT", evt_handlers=nodelay
    )
    try:
        if not assoc.is_established:
            out["error"] = "association refused"
            return
        out["statuses"] = [_store(assoc, path) for path in files]
        out["last_stored"] = time.monotonic()
        sent.set()
        threading.Event().wait(hold_s)  # the modality's idle time, not a wait for a result
        out["releasing"] = time.monotonic()
        if assoc.is_established:
            assoc.release()
    finally:
        sent.set()
        if assoc.is_established:
            assoc.abort()


def run_settle(matrix: Matrix, folder: Path, rng: random.Random, result: RunResult) -> RunResult:
    """Killed after the last instance was stored and before the job was claimed."""
    mr = matrix.copy(folder)
    hold = rng.uniform(0.3, 2.0)  # the modality's association stays open this long
    at = rng.uniform(0.0, hold + matrix.settle_window())  # then release to claim
    result.moment = f"+{at:.2f} s after the last instance (association held {hold:.2f} s)"
    with _pacs(folder) as pacs, _daemon(folder, pacs.dicom_port, matrix.sections) as daemon:
        sent, out = threading.Event(), dict[str, Any]()
        modality = threading.Thread(
            target=_hold_association, args=(daemon.port, mr.files, hold, sent, out), daemon=True
        )
        modality.start()
        if not sent.wait(timeout=300) or "last_stored" not in out:
            raise AssertionError(f"the modality did not store the series: {out}")
        if set(out["statuses"]) != {0}:
            raise AssertionError(f"statuses {Counter(out['statuses'])}")
        remaining = out["last_stored"] + at - time.monotonic()
        threading.Event().wait(max(0.0, remaining))  # the drawn kill moment
        daemon.kill()
        killed = time.monotonic()
        releasing = out.get("releasing")
        phase = _job_phase(daemon.catalog, mr.series_uid)
        open_ = "association open" if releasing is None or releasing > killed else "released"
        result.landed = f"{open_}, {phase}"
        if phase.startswith("job") and "queued" not in phase:
            result.outside("the job was claimed before the kill: not a settle fault")
        daemon.start()  # the modality saw every instance stored: it sends nothing again
        modality.join(timeout=60)  # its release, or its abort by our kill
        return _settle_outcome(result, matrix, daemon, pacs, mr)


def run_convert(matrix: Matrix, folder: Path, rng: random.Random, result: RunResult) -> RunResult:
    """Killed a drawn fraction of the (calibrated) conversion time after the claim."""
    mr = matrix.copy(folder)
    fraction = rng.uniform(0.0, 0.9)
    window = matrix.convert_window()
    at = fraction * window
    result.moment = f"+{at:.2f} s after the claim ({fraction:.0%} of {window:.2f} s)"
    with _pacs(folder) as pacs, _daemon(folder, pacs.dicom_port, matrix.sections) as daemon:
        catalog = daemon.catalog
        sending = storescu_background(daemon.port, list(mr.files))
        if not _wait(
            lambda: catalog.job_states(mr.series_uid) == ["running"], 300, daemon, "the claim"
        ):
            raise AssertionError(f"no job claimed:\n{daemon.log_text()[-4000:]}")
        threading.Event().wait(at)  # the drawn kill moment
        daemon.kill()
        sending.communicate(timeout=60)
        result.landed = _job_phase(catalog, mr.series_uid)
        if _send_counts(catalog).get("stored", 0):
            result.outside("sends had begun at the kill: a send fault, not a convert one")
        daemon.start()
        return _settle_outcome(result, matrix, daemon, pacs, mr)


def _kill_after_stored(daemon: Daemon, mr: Series, k: int) -> None:
    """Send the series and SIGKILL the daemon once k of its sCT instances are stored."""
    catalog = daemon.catalog
    _send_whole(daemon, mr)
    if not _wait(lambda: _send_counts(catalog).get("stored", 0) >= k, 300, daemon, "the k-th send"):
        raise AssertionError(f"send {k} never stored:\n{daemon.log_text()[-4000:]}")
    daemon.kill()


def run_send(matrix: Matrix, folder: Path, rng: random.Random, result: RunResult) -> RunResult:
    """Killed after a drawn number of sCT instances were stored at the PACS."""
    mr = matrix.copy(folder)
    n = len(mr)
    k = rng.randint(1, max(1, int(0.8 * n)))
    result.moment = f"sCT instance {k}/{n} stored"
    with _pacs(folder) as pacs, _daemon(folder, pacs.dicom_port, matrix.sections) as daemon:
        catalog = daemon.catalog
        _kill_after_stored(daemon, mr, k)
        result.landed = _job_phase(catalog, mr.series_uid)
        if _send_counts(catalog).get("stored", 0) >= n:
            result.outside("every instance was stored before the kill: not a send fault")
        daemon.start()
        return _settle_outcome(result, matrix, daemon, pacs, mr)


def run_half_written(
    matrix: Matrix, folder: Path, rng: random.Random, result: RunResult
) -> RunResult:
    """Killed after a drawn number of sCT instances were stored while the series was still
    being written (the sender sends each file as soon as the writer has written it)."""
    mr = matrix.copy(folder)
    n = len(mr)
    k = rng.randint(1, max(1, n // 10))
    result.moment = f"sCT instance {k}/{n} stored"
    with _pacs(folder) as pacs, _daemon(folder, pacs.dicom_port, matrix.sections) as daemon:
        catalog = daemon.catalog
        _kill_after_stored(daemon, mr, k)
        result.landed = _job_phase(catalog, mr.series_uid)
        job = catalog.jobs(mr.series_uid)[-1]
        if job["output_dir"] is not None:
            result.outside("the series was written whole before the kill: a send fault")
        else:
            written = len(list((folder / "var").rglob(f"job{job['id']}/CT_*.dcm")))
            result.landed += f", {written}/{n} sCT files written"
        daemon.start()
        return _settle_outcome(result, matrix, daemon, pacs, mr)


def run_prior(matrix: Matrix, folder: Path, rng: random.Random, result: RunResult) -> RunResult:
    """Killed in the middle of the C-MOVE of a prior CT from Orthanc (the daemon's source)."""
    total = matrix.prior_slices
    k = rng.randint(1, max(1, int(0.9 * total)))
    result.moment = f"CT instance {k}/{total} retrieved"
    patient = f"FAULT-{result.run}"
    ct, ct_uid = prior_series(
        folder / "ct",
        modality="CT",
        patient_id=patient,
        name="Doe^Fault",
        study_date="20260101",
        description="Head 1.0 H30s",
        study_uid=generate_uid(),
        slices=total,
        size=32,
    )
    mr_files, mr_uid = prior_series(
        folder / "mr",
        modality="MR",
        patient_id=patient,
        name="Doe^Fault",
        study_date="20260301",
        description="ZTE bone",
        study_uid=generate_uid(),
    )
    mr = Series(tuple(mr_files), mr_uid)
    pacs_port = free_port()
    with _daemon(folder, pacs_port, matrix.sections, start=False) as daemon:
        pacs = QueryRetrievePacs(folder / "orthanc", dicom_port=pacs_port, bonect_port=daemon.port)
        with pacs:
            pacs.upload(ct)
            add_source(daemon, pacs_port)
            daemon.start()
            _send_whole(daemon, mr)
            catalog = daemon.catalog
            if not _wait(lambda: catalog.instance_count(ct_uid) >= k, 300, daemon, "the C-MOVE"):
                raise AssertionError(f"CT instance {k} never came:\n{daemon.log_text()[-4000:]}")
            daemon.kill()
            at_kill = catalog.instance_count(ct_uid)
            result.landed = f"{at_kill}/{total} CT instances retrieved"
            if at_kill >= total:
                result.outside("the C-MOVE ended before the kill: not a prior fault")
            daemon.start()
            return _prior_outcome(matrix, result, daemon, pacs, mr, ct_uid)


def _prior_outcome(
    matrix: Matrix, result: RunResult, daemon: Daemon, pacs: OrthancServer, mr: Series, ct_uid: str
) -> RunResult:
    """After the restart: the prior task ends, the CT is in the archive once, the sCT sent."""
    catalog, total = daemon.catalog, matrix.prior_slices

    def tasks() -> list[str]:
        return [str(s) for (s,) in catalog.rows("SELECT state FROM prior_tasks")]

    def finished() -> bool:
        states = tasks()
        return bool(states) and all(s in PRIOR_TERMINAL for s in states)

    _wait(finished, matrix.deadline_s, daemon, "the prior task to end")
    _settle_outcome(result, matrix, daemon, pacs, mr)
    states = tasks()
    result.stuck += sum(s not in PRIOR_TERMINAL for s in states) + (0 if states else 1)
    if states != ["done"]:
        result.notes.append(f"prior tasks {states}")
    files = [f for f in (daemon.storage / "archive").rglob("*.dcm") if ct_uid in str(f)]
    retrieved = catalog.instance_count(ct_uid)
    result.lost += max(0, total - retrieved)
    result.duplicated += max(0, len(files) - retrieved)
    return result


# -- the faults without a kill -----------------------------------------------------------------


class RefusingPacs:
    """A pynetdicom storage SCP standing in for the PACS. The instances are numbered in the
    order they first arrive; the first attempt of instance ``k`` in ``plan`` is answered with
    ``plan[k]`` (0xA700 or 0xC000), every other attempt is stored and answered success."""

    def __init__(self, plan: dict[int, int]) -> None:
        self.plan = dict(plan)
        self.seen: dict[str, int] = {}  # SOP Instance UID -> its number
        self.stored: Counter[str] = Counter()  # SOP Instance UID -> successes answered
        self.series: set[str] = set()
        self.refused: Counter[int] = Counter()
        self._lock = threading.Lock()
        self.ae = AE(ae_title="PACS")
        self.ae.add_supported_context(CTImageStorage)
        self.ae.add_supported_context(Verification)
        self.port = free_port()
        self._server: Any = None

    def _on_store(self, event: Event) -> int:
        ds: Dataset = event.dataset
        uid = str(ds.SOPInstanceUID)
        with self._lock:
            first = uid not in self.seen
            number = self.seen.setdefault(uid, len(self.seen))
            if first and number in self.plan:
                status = self.plan[number]
                self.refused[status] += 1
                return status
            self.stored[uid] += 1
            self.series.add(str(ds.SeriesInstanceUID))
        return 0x0000

    def __enter__(self) -> RefusingPacs:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_OPEN, set_nodelay),
        ]
        self._server = self.ae.start_server(
            (LOCALHOST, self.port), block=False, evt_handlers=handlers
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()


def run_pacs_status(
    matrix: Matrix, folder: Path, rng: random.Random, result: RunResult
) -> RunResult:
    """The PACS refuses (0xA700 / 0xC000) the first attempt of a drawn share of the sCT."""
    mr = matrix.copy(folder)
    n = len(mr)
    share = rng.uniform(0.1, 0.5)
    positions = sorted(rng.sample(range(n), max(1, int(share * n))))
    plan = {k: rng.choice(REFUSAL_STATUSES) for k in positions}
    statuses = list(plan.values())
    result.moment = (
        f"{len(plan)}/{n} refused once "
        f"({statuses.count(0xA700)} x A700, {statuses.count(0xC000)} x C000)"
    )
    with RefusingPacs(plan) as pacs, _daemon(folder, pacs.port, matrix.sections) as daemon:
        _send_whole(daemon, mr)
        catalog = daemon.catalog

        def finished() -> bool:
            states = catalog.job_states(mr.series_uid)
            return bool(states) and all(s in TERMINAL for s in states)

        _wait(finished, matrix.deadline_s, daemon, "the job to end")
        states = catalog.job_states(mr.series_uid)
        refused = ", ".join(f"{n} x {code:04X}" for code, n in sorted(pacs.refused.items()))
        result.landed = f"job {states[-1] if states else 'none'}, refused {refused}"
        result.stuck = sum(s not in TERMINAL for s in states) + (0 if states else 1)
        result.lost = max(0, n - catalog.instance_count(mr.series_uid))
        result.lost += max(0, n - len(pacs.stored))
        result.duplicated = sum(c - 1 for c in pacs.stored.values()) + max(0, len(pacs.series) - 1)
        result.missing = 0 if len(pacs.stored) >= n else 1
        if sum(pacs.refused.values()) != len(plan):
            result.outside(f"refused {sum(pacs.refused.values())} of {len(plan)} planned")
        jobs = catalog.jobs(mr.series_uid)
        if jobs:
            result.notes.append(f"{jobs[-1]['attempts']} attempt(s)")
        return result


def run_catalog_lock(
    matrix: Matrix, folder: Path, rng: random.Random, result: RunResult
) -> RunResult:
    """Another process holds BEGIN EXCLUSIVE on the catalog for a drawn time mid-series."""
    mr = matrix.copy(folder)
    n = len(mr)
    k = rng.randint(1, max(1, int(0.8 * n)))
    hold = rng.uniform(2.0, 6.0)
    result.moment = f"locked at instance {k}/{n} for {hold:.1f} s"
    with _pacs(folder) as pacs, _daemon(folder, pacs.dicom_port, matrix.sections) as daemon:
        catalog = daemon.catalog
        sending = storescu_background(daemon.port, list(mr.files))
        if not _wait(lambda: catalog.instance_count() >= k, 300, daemon, "the k-th instance"):
            raise AssertionError(f"instance {k} never arrived:\n{daemon.log_text()[-4000:]}")
        lock = sqlite3.connect(catalog.path, timeout=30, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            at_lock = catalog.instance_count()
            threading.Event().wait(hold)  # the other process's hold, the fault itself
            lock.execute("ROLLBACK")
        finally:
            lock.close()
        _, stderr = sending.communicate(timeout=600)
        result.landed = f"{at_lock}/{n} received at the lock, storescu exit {sending.returncode}"
        if sending.returncode != 0:  # refused instances: the modality sends the series again
            result.notes.append("storescu failed, series sent again: " + stderr[-200:].strip())
            _send_whole(daemon, mr)
        return _settle_outcome(result, matrix, daemon, pacs, mr)


def run_pacs_down(matrix: Matrix, folder: Path, rng: random.Random, result: RunResult) -> RunResult:
    """Orthanc is killed after a drawn number of sCT instances were stored (0: when the job is
    claimed, just before its sCT is ready), stays down ``pacs_down_s`` and comes back on the same
    port and storage; the daemon must retry, with backoff, until it delivers."""
    mr = matrix.copy(folder)
    n = len(mr)
    k = rng.randint(0, max(1, int(0.8 * n)))
    down = matrix.pacs_down_s
    when = f"sCT instance {k}/{n} stored" if k else "the job claimed (sCT not ready)"
    result.moment = f"down {down:.0f} s from {when}"
    with _pacs(folder) as first, _daemon(folder, first.dicom_port, matrix.sections) as daemon:
        catalog = daemon.catalog
        _send_whole(daemon, mr)
        if k:
            reached = _wait(
                lambda: _send_counts(catalog).get("stored", 0) >= k, 300, daemon, "the k-th send"
            )
        else:
            reached = _wait(lambda: bool(catalog.job_states(mr.series_uid)), 300, daemon, "a job")
        if not reached:
            raise AssertionError(f"{when} never came:\n{daemon.log_text()[-4000:]}")
        first.stop()  # SIGKILL: what it answered success to is committed, the rest is not
        result.landed = _job_phase(catalog, mr.series_uid)
        if _send_counts(catalog).get("stored", 0) >= n:
            result.outside("every instance was stored before the PACS went down")
        states: set[str] = set()
        deadline = time.monotonic() + down
        while time.monotonic() < deadline:  # the outage itself; the daemon must not die in it
            states.update(catalog.job_states(mr.series_uid))
            left = max(0.0, deadline - time.monotonic())
            _wait(lambda: False, min(1.0, left), daemon, "the PACS to come back")
        jobs = catalog.jobs(mr.series_uid)
        attempts = jobs[-1]["attempts"] if jobs else 0
        result.notes.append(f"in the outage: job states {sorted(states)}, {attempts} attempt(s)")
        with OrthancOnPort(folder / "orthanc", dicom_port=first.dicom_port) as pacs:
            return _settle_outcome(result, matrix, daemon, pacs, mr)


Runner = Callable[[Matrix, Path, random.Random, RunResult], RunResult]
RUNNERS: dict[str, Runner] = {
    "receive": run_receive,
    "settle": run_settle,
    "convert": run_convert,
    "half_written": run_half_written,
    "send": run_send,
    "prior": run_prior,
    "pacs_status": run_pacs_status,
    "catalog_lock": run_catalog_lock,
    "pacs_down": run_pacs_down,
}


# -- the table ---------------------------------------------------------------------------------


def table(results: Sequence[RunResult]) -> str:
    """Per stage: runs, lost, duplicated, missing, stuck and the kill moments (markdown)."""
    lines = [
        "| stage | runs | in stage | lost | duplicated | missing | stuck | broke | s/run "
        "| moments (landed) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        mine = [r for r in results if r.stage == stage]
        if not mine:
            continue
        moments = "; ".join(f"{r.moment} ({r.landed})" for r in mine)
        lines.append(
            f"| {stage} | {len(mine)} | {sum(r.in_stage for r in mine)} | "
            f"{sum(r.lost for r in mine)} | "
            f"{sum(r.duplicated for r in mine)} | {sum(r.missing for r in mine)} | "
            f"{sum(r.stuck for r in mine)} | {sum(bool(r.error) for r in mine)} | "
            f"{sum(r.seconds for r in mine) / len(mine):.1f} | "
            f"{moments} |"
        )
    return "\n".join(lines)
