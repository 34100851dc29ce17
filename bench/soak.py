"""Load and soak: concurrent senders while a conversion runs, then many series back to back.

Both parts run ``bonect-daemon start`` as a subprocess (from a generated config, as the other
benchmarks do) with Orthanc as its PACS, and sample the daemon process every second from
``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ``Threads``) and ``/proc/<pid>/fd`` (open file
descriptors).

* **Load**: one bone-MR series (300 x 256², bundled Light_U-Net in three planes) is sent first;
  as soon as its job is claimed (converting), 4 DCMTK ``storescu -v`` associations send one CT
  series of 300 x 256² each, at once. Figures: associations refused (storescu's "Association
  Rejected", and the daemon's audit trail), instances refused (C-STORE responses other than
  Success), the seconds from the first sender's start to the last one's release, the job's
  state when the last one finished, and every one of the 4 x 300 SOP Instance UIDs in the
  catalog with its archive file present and readable as that instance. All must be 0 refused.
* **Soak**: 50 bone-MR series of 48 x 256² (each its own study and series), converted by the
  classical map and sent to Orthanc, strictly one after another (the next is sent once the
  previous one's job is done and Orthanc holds its sCT). Figures: RSS, open fds and threads at
  start, after 10, 25 and 50 series and at most; the least-squares slope over the last 25
  series (per series); at the end Orthanc must hold exactly 50 sCT series, each with 48
  instances, with the UIDs of the catalog's 50 jobs (one generation each, all done).

    python bench/soak.py [--quick] [--series 50] [--senders 4] [--instances 300]
        [--only load|soak]

Full size ~5 min here; ``--quick`` (smoke test, ~20 s): load 4 x 30 instances of 64² with a
32² model, soak 5 series of 20 x 64². The per-second samples are also written to
``bench/out/soak[-quick]-samples.csv``, the daemon's logs to ``bench/out/soak[-quick]-load.log``
and ``-soak.log``. Exit status 1 when an association or instance was refused or lost, or when
Orthanc's sCT series are not exactly the ones converted.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from common import (
    OUT,
    Orthanc,
    Process,
    command_line,
    daemon_config,
    free_port,
    header,
    publish,
    scratch,
    start_daemon,
    stopwatch,
    storescu,
    table,
    wait_until,
)
from convert import quick_model
from series import SeriesSpec, series_files

PLANES = ["axial", "coronal", "sagittal"]
IN_FLIGHT = ("running", "converted", "sending")
SUCCESS = re.compile(r"Received Store Response \(Success\)")
RESPONSE = re.compile(r"Received Store Response \(")


# -- the daemon from outside -------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """One reading of the daemon process: seconds since start, memory, fds, threads."""

    seconds: float
    rss_mb: float
    hwm_mb: float
    fds: int
    threads: int
    series_done: int = 0


def read_usage(pid: int, started: float, series_done: int = 0) -> Usage:
    """``VmRSS``, ``VmHWM`` and ``Threads`` from /proc/<pid>/status; the entries of its fd/."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    fds = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    return Usage(
        seconds=time.monotonic() - started,
        rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
        hwm_mb=int(fields["VmHWM"].split()[0]) / 1024,
        fds=fds,
        threads=int(fields["Threads"]),
        series_done=series_done,
    )


@dataclass
class Sampler:
    """Reads the daemon's usage every ``interval`` seconds on a thread, until stopped."""

    pid: int
    interval: float = 1.0
    samples: list[Usage] = field(default_factory=list)
    series_done: int = 0
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def now(self) -> Usage:
        usage = read_usage(self.pid, self.started, self.series_done)
        self.samples.append(usage)
        return usage

    def steady(self, timeout: float = 60.0) -> Usage:
        """The first reading after a second in which threads and fds did not change."""
        previous = [self.now()]

        def unchanged() -> bool:
            if time.monotonic() - self.started - previous[0].seconds < 1.0:
                return False
            now = self.now()
            same = (now.threads, now.fds) == (previous[0].threads, previous[0].fds)
            previous[0] = now
            return same

        wait_until(unchanged, "the daemon's threads and fds to settle", timeout=timeout)
        return previous[0]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.now()
            except (OSError, KeyError, ValueError):  # the process is gone
                return

    def __enter__(self) -> Sampler:
        self.now()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def csv(self) -> str:
        lines = ["seconds,series_done,rss_mb,hwm_mb,fds,threads"]
        for s in sorted(self.samples, key=lambda s: s.seconds):
            lines.append(
                f"{s.seconds:.2f},{s.series_done},{s.rss_mb:.1f},{s.hwm_mb:.1f},{s.fds},{s.threads}"
            )
        return "\n".join(lines) + "\n"


def query(db: Path, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
    """Rows from the daemon's catalog, read through a read-only connection."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    try:
        return list(connection.execute(sql, tuple(params)))
    finally:
        connection.close()


def job_state(db: Path, series_uid: str) -> str | None:
    """The state of the newest job of a series (None: no job yet)."""
    rows = query(
        db,
        "SELECT jobs.state FROM jobs JOIN series ON jobs.series_id = series.id "
        "WHERE series.series_uid = ? ORDER BY jobs.id DESC LIMIT 1",
        [series_uid],
    )
    return str(rows[0]["state"]) if rows else None


def alive(daemon: Process) -> None:
    if daemon.popen.poll() is not None:
        raise RuntimeError(f"the daemon exited:\n{daemon.log.read_text()[-3000:]}")


def series_uid(files: Sequence[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def sop_uids(files: Sequence[Path]) -> set[str]:
    return {
        str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            .SOPInstanceUID)
        for f in files
    }  # fmt: skip


def audit_events(storage: Path) -> dict[str, int]:
    """How many audit records of each event kind the daemon wrote."""
    counts: dict[str, int] = {}
    path = storage / "audit" / "audit.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            event = str(json.loads(line).get("Event", "?"))
            counts[event] = counts.get(event, 0) + 1
    return counts


def log_problems(log: Path, keep_as: str) -> list[str]:
    """The daemon's log lines at WARNING or above; the log is kept as ``OUT/<keep_as>``."""
    OUT.mkdir(parents=True, exist_ok=True)
    text = log.read_text(errors="replace")
    (OUT / keep_as).write_text(text)
    words = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")
    return [line for line in text.splitlines() if any(w in line for w in words)]


def quoted(lines: Sequence[str], most: int = 10) -> list[str]:
    """Log lines as a fenced block (the first ``most``, each cut at 240 characters)."""
    if not lines:
        return []
    shown = [line[:240] for line in lines[:most]]
    more = [f"... and {len(lines) - most} more"] if len(lines) > most else []
    return ["", "```", *shown, *more, "```"]


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    xs, ys = zip(*points, strict=True)
    if len(set(ys)) == 1:
        return 0.0
    return float(statistics.linear_regression(xs, ys).slope)


# -- load --------------------------------------------------------------------------------------


@dataclass
class Sender:
    files: list[Path]
    done: subprocess.CompletedProcess[str] | None = None
    finished: float = 0.0

    @property
    def rejected(self) -> bool:
        return self.done is None or "Association Rejected" in self.done.stderr + self.done.stdout

    @property
    def successes(self) -> int:
        return 0 if self.done is None else len(SUCCESS.findall(self.done.stdout + self.done.stderr))

    @property
    def responses(self) -> int:
        return (
            0 if self.done is None else len(RESPONSE.findall(self.done.stdout + self.done.stderr))
        )


def load(args: argparse.Namespace, work: Path, model: Path) -> dict[str, Any]:
    """The load part: 4 senders at once while the trigger series converts."""
    slices, matrix = (30, 64) if args.quick else (args.instances, 256)
    name = f"{'q-' if args.quick else ''}ingest-mr-{slices}x{matrix}"  # end_to_end's, cached
    trigger = series_files(SeriesSpec(name, "MR", slices, matrix))
    senders = [
        Sender(series_files(SeriesSpec(f"load-ct-{slices}x{matrix}-{i}", "CT", slices, matrix)))
        for i in range(args.senders)
    ]
    trigger_uid = series_uid(trigger)
    work.mkdir(parents=True)
    pacs = Orthanc(work / "orthanc", allowed_aets=("BONECT",))
    with pacs:
        port = free_port()
        converter = {"model": str(model), "planes": PLANES, "device": "cpu"}
        config = daemon_config(
            work, port=port, pacs_port=pacs.dicom_port, sections={"converter": converter}
        )
        daemon = start_daemon(config, port)
        db = work / "var" / "catalog.sqlite3"
        try:
            with Sampler(daemon.popen.pid) as sampler:
                sent = storescu(port, trigger, called_ae="BONECT")
                if sent.returncode != 0:
                    raise RuntimeError(f"storescu of the trigger failed: {sent.stderr[-3000:]}")

                def converting() -> bool:
                    alive(daemon)
                    return job_state(db, trigger_uid) in (*IN_FLIGHT, "done")

                wait_until(converting, "the trigger's job to be claimed", timeout=args.timeout)
                state_at_start = job_state(db, trigger_uid)
                before = sampler.now()

                def send(sender: Sender) -> None:
                    sender.done = storescu(
                        port, sender.files, called_ae="BONECT", options=["-v"], timeout=args.timeout
                    )
                    sender.finished = time.monotonic()

                threads = [threading.Thread(target=send, args=(s,)) for s in senders]
                with stopwatch() as elapsed:
                    started = time.monotonic()
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join()
                state_at_end = job_state(db, trigger_uid)
                after = sampler.now()

                def delivered() -> bool:
                    alive(daemon)
                    return job_state(db, trigger_uid) == "done" and pacs.count() >= len(trigger)

                wait_until(delivered, "the trigger's sCT at Orthanc", timeout=args.timeout)
                trigger_done = time.monotonic()
                post = sampler.now()
        finally:
            daemon.stop()
        job = query(db, "SELECT claimed_at, finished_at, timings FROM jobs ORDER BY id")[-1]
    stored = archived = 0
    for sender in senders:
        uid = series_uid(sender.files)
        rows = query(
            db,
            "SELECT instances.sop_instance_uid, instances.path FROM instances "
            "JOIN series ON instances.series_id = series.id WHERE series.series_uid = ?",
            [uid],
        )
        wanted = sop_uids(sender.files)
        in_catalog = {str(r["sop_instance_uid"]) for r in rows}
        stored += len(wanted & in_catalog)
        for row in rows:
            path = Path(row["path"])
            path = path if path.is_absolute() else work / "var" / path
            if path.is_file() and row["sop_instance_uid"] in wanted:
                read = pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
                )
                archived += int(str(read.SOPInstanceUID) == row["sop_instance_uid"])
    audit = audit_events(work / "var")
    total = slices * len(senders)
    return {
        "senders": len(senders),
        "instances": slices,
        "matrix": matrix,
        "seconds": elapsed(),
        "per_sender": [s.finished - started for s in senders],
        "refused_associations": sum(s.rejected for s in senders),
        "refused_instances": total - sum(s.successes for s in senders),
        "responses": sum(s.responses for s in senders),
        "exit_codes": [None if s.done is None else s.done.returncode for s in senders],
        "audit": audit,
        "total": total,
        "in_catalog": stored,
        "in_archive": archived,
        "state_at_start": state_at_start,
        "state_at_end": state_at_end,
        "trigger_done_after": trigger_done - started,
        "trigger_timings": job["timings"],
        "before": before,
        "after": after,
        "post": post,
        "max_rss": max(s.rss_mb for s in sampler.samples),
        "max_fds": max(s.fds for s in sampler.samples),
        "log_problems": log_problems(daemon.log, f"soak{'-quick' if args.quick else ''}-load.log"),
        "trigger_slices": len(trigger),
    }


# -- soak --------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The soak part: ``args.series`` series one after another; usage sampled all along."""
    slices, matrix = (20, 64) if args.quick else (48, 256)
    specs = [
        SeriesSpec(f"soak-mr-{slices}x{matrix}-{i:02d}", "MR", slices, matrix)
        for i in range(args.series)
    ]
    all_files = [series_files(spec) for spec in specs]  # generated before the daemon starts
    uids = [series_uid(files) for files in all_files]
    work.mkdir(parents=True)
    seconds: list[float] = []
    readings: dict[int, Usage] = {}
    pacs = Orthanc(work / "orthanc", allowed_aets=("BONECT",))
    with pacs:
        port = free_port()
        config = daemon_config(work, port=port, pacs_port=pacs.dicom_port)  # classical, CPU
        daemon = start_daemon(config, port)
        db = work / "var" / "catalog.sqlite3"
        try:
            with Sampler(daemon.popen.pid) as sampler:
                readings[0] = sampler.steady()
                for n, (files, uid) in enumerate(zip(all_files, uids, strict=True), start=1):
                    with stopwatch() as elapsed:
                        sent = storescu(port, files, called_ae="BONECT", options=["-v"])
                        if sent.returncode != 0 or len(
                            SUCCESS.findall(sent.stdout + sent.stderr)
                        ) != len(files):
                            raise RuntimeError(
                                f"series {n}: storescu failed:\n{sent.stderr[-3000:]}"
                            )

                        def delivered(uid: str = uid, n: int = n) -> bool:
                            alive(daemon)
                            return job_state(db, uid) == "done" and pacs.count() >= n * slices

                        wait_until(delivered, f"series {n}'s sCT at Orthanc", timeout=args.timeout)
                    seconds.append(elapsed())
                    sampler.series_done = n
                    readings[n] = sampler.now()
                    print(
                        f"series {n}/{len(specs)}: {seconds[-1]:.1f} s, "
                        f"RSS {readings[n].rss_mb:.0f} MB, {readings[n].fds} fds",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            daemon.stop()
        at_pacs = pacs.get("/series?expand")
        pacs_instances = pacs.count()
    jobs = query(
        db,
        "SELECT jobs.*, series.series_uid, series.association_released_at FROM jobs "
        "JOIN series ON jobs.series_id = series.id",
    )
    sends = query(db, "SELECT status, COUNT(*) AS n FROM sends GROUP BY status")
    sct = [s for s in at_pacs if s["MainDicomTags"].get("Modality") == "CT"]
    pacs_uids = [str(s["MainDicomTags"]["SeriesInstanceUID"]) for s in sct]
    job_uids = {str(j["output_series_uid"]) for j in jobs}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"soak{'-quick' if args.quick else ''}-samples.csv").write_text(sampler.csv())
    return {
        "series": len(specs),
        "slices": slices,
        "matrix": matrix,
        "seconds": seconds,
        "readings": readings,
        "samples": sampler.samples,
        "sct_series": len(sct),
        "other_series": len(at_pacs) - len(sct),
        "distinct_sct": len(set(pacs_uids)),
        "wrong_counts": sum(len(s["Instances"]) != slices for s in sct),
        "pacs_instances": pacs_instances,
        "match_jobs": set(pacs_uids) == job_uids,
        "jobs": len(jobs),
        "jobs_done": sum(j["state"] == "done" for j in jobs),
        "generations": sorted({int(j["generation"]) for j in jobs}),
        "sends": {str(r["status"]): int(r["n"]) for r in sends},
        "log_problems": log_problems(daemon.log, f"soak{'-quick' if args.quick else ''}-soak.log"),
        "slowest": slowest(seconds, uids, jobs),
    }


def slowest(seconds: Sequence[float], uids: Sequence[str], jobs: Sequence[sqlite3.Row]) -> str:
    """Where the slowest series spent its time, from its job's catalog row."""
    k = max(range(len(seconds)), key=lambda i: seconds[i])
    (job,) = [j for j in jobs if j["series_uid"] == uids[k]]

    def at(name: str) -> datetime:
        return datetime.fromisoformat(str(job[name])).replace(tzinfo=UTC)

    stages = {
        "release to job": (at("created_at") - at("association_released_at")).total_seconds(),
        "queue": (at("claimed_at") - at("created_at")).total_seconds(),
        **json.loads(job["timings"] or "{}"),
    }
    parts = ", ".join(f"{name} {float(value):.2f}" for name, value in stages.items())
    return f"series {k + 1}, {seconds[k]:.1f} s (job {job['id']}: {parts} s)"


# -- report ------------------------------------------------------------------------------------


def load_report(got: dict[str, Any]) -> list[str]:
    total = got["total"]
    ok = got["refused_associations"] == 0 and got["refused_instances"] == 0
    ok = ok and got["in_catalog"] == total and got["in_archive"] == total
    per = got["per_sender"]
    rows = [
        ["associations refused (storescu)", got["refused_associations"], "0"],
        ["associations refused (daemon's audit)", got["audit"].get("association_refused", 0), "0"],
        [
            "associations accepted (daemon's audit)",
            got["audit"].get("association_accepted", 0),
            f"{got['senders'] + 1}",
        ],
        ["instances refused (responses other than Success)", got["refused_instances"], "0"],
        ["C-STORE responses received", got["responses"], f"{total}"],
        ["storescu exit codes", " ".join(str(c) for c in got["exit_codes"]), "0"],
        ["instances in the catalog", got["in_catalog"], f"{total}"],
        ["instances in the archive (file read back)", got["in_archive"], f"{total}"],
        ["seconds, first start to last release", f"{got['seconds']:.1f}", ""],
        ["seconds per sender (min-max)", f"{min(per):.1f}-{max(per):.1f}", ""],
        ["instances/s, all senders", f"{total / got['seconds']:.1f}", ""],
        [
            "conversion job when the senders started / ended",
            f"{got['state_at_start']} / {got['state_at_end']}",
            "running / -",
        ],
        [
            "trigger's sCT all at Orthanc, s after the senders started",
            f"{got['trigger_done_after']:.1f}",
            "",
        ],
        [
            "daemon RSS MB: before / senders done / sCT delivered / max",
            f"{got['before'].rss_mb:.0f} / {got['after'].rss_mb:.0f} / "
            f"{got['post'].rss_mb:.0f} / {got['max_rss']:.0f}",
            "",
        ],
        [
            "daemon open fds: before / senders done / sCT delivered / max",
            f"{got['before'].fds} / {got['after'].fds} / {got['post'].fds} / {got['max_fds']}",
            "",
        ],
        ["daemon log lines at WARNING or above", len(got["log_problems"]), "0"],
    ]
    return [
        f"**Load**: {got['senders']} DCMTK `storescu -v` associations at once, each one CT "
        f"series of {got['instances']} × {got['matrix']}², into `bonect-daemon start` while it "
        f"converts an MR {got['trigger_slices']} × {got['matrix']}² series (Light_U-Net, "
        f"3 planes, CPU; stage seconds {got['trigger_timings']}). "
        + ("**0 refused, every instance stored.**" if ok else "**REFUSED OR LOST INSTANCES.**"),
        "",
        table(["figure", "value", "expected"], rows),
        *quoted(got["log_problems"]),
    ]


def soak_report(got: dict[str, Any]) -> list[str]:
    n = got["series"]
    readings: dict[int, Usage] = got["readings"]
    samples: list[Usage] = got["samples"]
    milestones = sorted({0, 1, max(1, round(n / 5)), max(1, round(n / 2)), n})
    half = n // 2
    tail = [k for k in readings if k >= half]
    rss_slope = slope([(k, readings[k].rss_mb) for k in tail])
    fd_slope = slope([(k, readings[k].fds) for k in tail])
    thread_slope = slope([(k, readings[k].threads) for k in tail])
    rows: list[list[object]] = [
        [
            "start" if k == 0 else f"after {k} series",
            f"{readings[k].seconds:.0f}",
            f"{readings[k].rss_mb:.1f}",
            readings[k].fds,
            readings[k].threads,
        ]
        for k in milestones
    ]
    rows.append(
        [
            f"max of {len(samples)} samples (1/s)",
            "",
            f"{max(s.rss_mb for s in samples):.1f} (VmHWM {max(s.hwm_mb for s in samples):.1f})",
            max(s.fds for s in samples),
            max(s.threads for s in samples),
        ]
    )
    rows.append(
        [
            f"slope over series {half}-{n}, per series",
            "",
            f"{rss_slope:+.2f} MB",
            f"{fd_slope:+.3f}",
            f"{thread_slope:+.3f}",
        ]
    )
    bounded = rss_slope <= 0.5 and fd_slope <= 0.05 and thread_slope <= 0.05
    secs = got["seconds"]
    right = (
        got["sct_series"] == n
        and got["distinct_sct"] == n
        and got["wrong_counts"] == 0
        and got["pacs_instances"] == n * got["slices"]
        and got["match_jobs"]
        and got["jobs"] == n == got["jobs_done"]
        and got["generations"] == [1]
    )
    checks = [
        ["sCT series at Orthanc", got["sct_series"], f"{n}"],
        ["distinct SeriesInstanceUIDs among them", got["distinct_sct"], f"{n}"],
        [f"sCT series without exactly {got['slices']} instances", got["wrong_counts"], "0"],
        ["instances at Orthanc", got["pacs_instances"], f"{n * got['slices']}"],
        ["other series at Orthanc (e.g. rejection notes)", got["other_series"], "0"],
        ["Orthanc's sCT series = the catalog jobs' output series", got["match_jobs"], "True"],
        [
            "jobs / done / generations",
            f"{got['jobs']} / {got['jobs_done']} / {got['generations']}",
            f"{n} / {n} / [1]",
        ],
        ["sends by status", got["sends"], f"{{'stored': {n * got['slices']}}}"],
        [
            "seconds per series: median (min-max)",
            f"{statistics.median(secs):.2f} ({min(secs):.2f}-{max(secs):.2f})",
            "",
        ],
        ["seconds in all", f"{sum(secs):.0f}", ""],
        ["slowest", got["slowest"], ""],
        ["daemon log lines at WARNING or above", len(got["log_problems"]), "0"],
    ]
    return [
        f"**Soak**: {n} MR series of {got['slices']} × {got['matrix']}² back to back (classical "
        "map, sCT to Orthanc; the next is sent once the previous one is at Orthanc). Daemon "
        "process sampled every second from /proc. "
        + (
            "Growth not judged (quick: too few series)"
            if n < 20
            else ("**Bounded**" if bounded else "**GROWING**")
        )
        + " (slope limits: RSS ≤ 0.5 MB, fds ≤ 0.05, threads ≤ 0.05 per series); "
        + (
            "**Orthanc holds exactly what it should.**"
            if right
            else "**ORTHANC'S CONTENTS ARE WRONG.**"
        ),
        "",
        table(["when", "s", "RSS MB", "open fds", "threads"], rows),
        "",
        table(["check", "value", "expected"], checks),
        *quoted(got["log_problems"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="load 4 x 30, soak 5 series")
    parser.add_argument("--runs", type=int, default=1, help="ignored: one run (run_all passes it)")
    parser.add_argument("--series", type=int, default=None, help="soak series (default 50)")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--instances", type=int, default=300, help="per sender (load)")
    parser.add_argument("--only", choices=["load", "soak"], default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per wait")
    args = parser.parse_args(argv)
    if args.series is None:
        args.series = 5 if args.quick else 50
    from bonect.demo import bundled_model

    parts: list[str] = []
    ok = True
    with scratch("soak-") as tmp:
        if args.only in (None, "load"):
            model = quick_model(Path(tmp)) if args.quick else bundled_model()
            got = load(args, Path(tmp) / "load", model)
            parts += ["", *load_report(got)]
            ok = ok and got["refused_associations"] == 0 and got["refused_instances"] == 0
            ok = ok and got["in_archive"] == got["total"]
        if args.only in (None, "soak"):
            got = soak(args, Path(tmp) / "soak")
            parts += ["", *soak_report(got)]
            ok = ok and got["sct_series"] == got["series"] == got["distinct_sct"]
            ok = ok and got["wrong_counts"] == 0 and got["match_jobs"]
            ok = ok and got["pacs_instances"] == got["series"] * got["slices"]
    title = "Load and soak" + (" (quick: small series, smoke test only)" if args.quick else "")
    publish(
        "soak" + ("-quick" if args.quick else ""),
        "\n".join([header(title, command_line()), *parts]),
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
