"""End to end: association release -> last sCT instance stored at Orthanc, by stage.

The daemon (``bonect-daemon start``, converter = the bundled Light_U-Net in three planes on the
CPU, quiet time 600 s so that only release + complete geometry can settle the series) receives
a 300-slice 256² bone-MR series from DCMTK ``storescu`` and sends its sCT to Orthanc. As in
tests/e2e/test_daemon_throughput.py, the stages come from the catalog: settle wait (job created
- association released), queue wait (claimed - created), the worker's read / convert / write /
send (``jobs.timings``), and release -> last send recorded as stored. Each run also times the
bare model forward on the slices the conversion forwards (3 planes x model input size, at the
model input size; see bench/convert.py), in a separate process after the daemon is stopped.
Target: release -> last stored ≤ 1.5x the bare model time.

``--transport dcmsend`` runs the daemon with ``[sender] transport = "dcmsend"`` (DCMTK
``dcmsend`` processes fed what the writer has ready) instead of pynetdicom in its process.

    python bench/end_to_end.py [--quick] [--runs 3] [--transport pynetdicom|dcmsend]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    Orthanc,
    Samples,
    command_line,
    daemon_config,
    free_port,
    header,
    publish,
    scratch,
    start_daemon,
    storescu,
    table,
    verdict,
    wait_until,
)
from convert import quick_model, run_child
from series import SeriesSpec, series_files

SERIES = SeriesSpec("ingest-mr-300x256", "MR", 300, 256)
QUICK_SERIES = SeriesSpec("q-ingest-mr-30x64", "MR", 30, 64)
PLANES = ["axial", "coronal", "sagittal"]


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _rows(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    try:
        return list(connection.execute(sql, params))
    finally:
        connection.close()


def one_run(
    files: list[Path], model: Path, work: Path, timeout: float, transport: str = "pynetdicom"
) -> dict[str, float]:
    """Send the series, wait for its sCT at Orthanc; the stage seconds."""
    work.mkdir(parents=True)
    with Orthanc(work / "orthanc", allowed_aets=("BONECT",)) as pacs:
        port = free_port()
        config = daemon_config(
            work,
            port=port,
            pacs_port=pacs.dicom_port,
            sections={
                "converter": {"model": str(model), "planes": PLANES, "device": "cpu"},
                "sender": {"transport": transport},
            },
        )
        daemon = start_daemon(config, port)
        db = work / "var" / "catalog.sqlite3"
        try:
            started = time.monotonic()
            done = storescu(port, files, called_ae="BONECT")
            released = time.monotonic()
            if done.returncode != 0:
                raise RuntimeError(f"storescu failed: {done.stderr[-3000:]}")

            def delivered() -> bool:
                if daemon.popen.poll() is not None:
                    raise RuntimeError(f"daemon exited:\n{daemon.log.read_text()[-3000:]}")
                jobs = _rows(db, "SELECT state FROM jobs ORDER BY id")
                return bool(jobs) and jobs[-1]["state"] == "done" and pacs.count() >= len(files)

            wait_until(delivered, "the sCT at Orthanc", timeout=timeout)
            observed = time.monotonic() - released
        finally:
            daemon.stop()
        (series,) = _rows(db, "SELECT * FROM series WHERE modality = 'MR'")
        (job,) = _rows(db, "SELECT * FROM jobs ORDER BY id DESC LIMIT 1")
        sends = _rows(db, "SELECT updated_at, status FROM sends WHERE job_id = ?", (job["id"],))
    if {s["status"] for s in sends} != {"stored"} or len(sends) != len(files):
        raise RuntimeError(f"{len(sends)} sends, statuses { ({s['status'] for s in sends}) }")
    released_at = _utc(series["association_released_at"])
    stages = json.loads(job["timings"])
    result = {
        "storescu": released - started,
        "receive (first to last instance)": (
            _utc(series["last_received_at"]) - _utc(series["first_received_at"])
        ).total_seconds(),
        "settle wait": (_utc(job["created_at"]) - released_at).total_seconds(),
        "queue wait": (_utc(job["claimed_at"]) - _utc(job["created_at"])).total_seconds(),
        **{f"worker {k}": float(v) for k, v in stages.items()},
        "release to last stored (catalog)": (
            max(_utc(s["updated_at"]) for s in sends) - released_at
        ).total_seconds(),
        "release to all at Orthanc (observed)": observed,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny series and model input")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds per run")
    parser.add_argument(
        "--transport", choices=("pynetdicom", "dcmsend"), default="pynetdicom", help="[sender]"
    )
    args = parser.parse_args(argv)
    from bonect.demo import bundled_model

    spec = QUICK_SERIES if args.quick else SERIES
    files = series_files(spec)
    stages: dict[str, Samples] = {}
    bare = Samples()
    with scratch("e2e-") as tmp:
        model = quick_model(Path(tmp)) if args.quick else bundled_model()
        for run in range(args.runs):
            print(
                f"run {run + 1}/{args.runs}: {spec.label} through the daemon",
                file=sys.stderr,
                flush=True,
            )
            got_run = one_run(files, model, Path(tmp) / f"run{run}", args.timeout, args.transport)
            for key, value in got_run.items():
                stages.setdefault(key, Samples()).add(value)
            got: dict[str, Any] | None = run_child(
                ["--child", "bare-3", "--model", str(model)], 600
            )
            if got is None:
                raise RuntimeError("the bare model timed out")
            bare.add(got["seconds"])
            slices = int(got["slices"])
    total = stages["release to last stored (catalog)"]
    ratio = total.median / bare.median
    rows = [
        [name, f"{s.median:.2f}", f"{s.median / bare.median:.2f}", s.spread()]
        for name, s in stages.items()
    ]
    rows.append(
        [
            f"bare model forward, {slices} slices (3 planes × input size)",
            f"{bare.median:.2f}",
            "1.00",
            bare.spread(),
        ]
    )
    text = "\n".join(
        [
            header(
                "End to end" + (" (quick: 32² model input, smoke test only)" if args.quick else ""),
                command_line(),
            ),
            "",
            f"{spec.label} ({len(files)} instances) from DCMTK storescu into bonect-daemon "
            f"(bundled Light_U-Net, 3 planes, CPU), sCT to Orthanc ({args.transport}). Median of "
            f"{args.runs} runs; 'x bare' = seconds / bare model seconds.",
            "",
            table(["stage", "s", "× bare", "min-max s"], rows),
            "",
            f"release → last stored = {ratio:.2f} × bare: " + verdict(ratio, 1.5, at_least=False),
        ]
    )
    suffix = ("-quick" if args.quick else "") + ("-dcmsend" if args.transport == "dcmsend" else "")
    publish("end_to_end" + suffix, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
