"""Workers: N = 1, 2, 3, 4 worker processes on one PostgreSQL catalog, simulated accelerator.

Each worker is ``bonect-daemon start --role worker`` with ``BONECT_SIMULATED_FORWARD_SECONDS``
set (``bonect.daemon.simulated``): its conversion is a fixed sleep, as a GPU host's forward pass
would be, so that a 2-core machine measures the catalog and the hand-off, not its cores. The
rest is the real code: the claim (``FOR UPDATE SKIP LOCKED``, with a lease), reading the MR
series from the shared archive, writing the sCT DICOM series, the catalog's records. There is
no destination (nothing is sent), so the network send is not part of what is measured.

The PostgreSQL server is a throwaway cluster (``tests/catalog/postgres.py``; or
``$BONECT_TEST_POSTGRES_URL``). For each N the workers start once, and each run queues a batch
of series at once; the run ends when the last job is done. Reported per N (median of the runs):
series per minute, the ratio to N x one worker's rate (target ≥ 0.9 for N ≤ 4), and the claim
latency: the time from a worker's recording one job done to its claim of the next (median and
95th percentile over every such gap of every run), and the first claim after queueing.

    python bench/workers.py [--quick] [--runs 3] [--series 24] [--forward 1.0] [--workers 1,2,3,4]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from common import (
    Process,
    Samples,
    command_line,
    header,
    publish,
    scratch,
    table,
    verdict,
    wait_until,
)

from bonect.catalog import Catalog, JobState
from bonect.catalog.records import JobRecord
from bonect.daemon.simulated import ENVIRONMENT_VARIABLE
from bonect.dicom.header import read_header
from catalog.postgres import PostgresServer, unavailable  # tests/ is on the path (common)
from series_factory import make_mr_series, write_series

SLICES = (8, 64, 64)  # a small series: the read and write stay far below the forward
QUICK = {"series": 4, "forward": 0.3, "workers": "1,2"}


def queue_batch(catalog: Catalog, archive: Path, batch: int, count: int) -> datetime:
    """Write ``count`` series to the archive, record and queue them; the time they were queued."""
    written = []
    for k in range(count):
        datasets = make_mr_series(SLICES, seed=k, patient_id=f"B{batch:02d}{k:04d}")
        folder = archive / f"b{batch}" / str(datasets[0].SeriesInstanceUID)
        written.append((datasets, write_series(datasets, folder)))
    now = datetime.now(UTC)
    for datasets, paths in written:  # recorded first, queued together
        for dataset, path in zip(datasets, paths, strict=True):
            catalog.record_instance(read_header(dataset), path, received_at=now)
    queued_at = datetime.now(UTC)
    for datasets, _ in written:
        catalog.enqueue_job(str(datasets[0].SeriesInstanceUID), queued_at)
    return queued_at


def gaps(jobs: list[JobRecord]) -> tuple[list[float], list[float]]:
    """(done → next claim of the same worker, queued → first claim of each worker) in s."""
    by_worker: dict[str, list[JobRecord]] = defaultdict(list)
    for job in jobs:
        by_worker[job.claimed_by or "?"].append(job)
    between, first = [], []
    for mine in by_worker.values():
        mine.sort(key=lambda j: j.claimed_at or j.created_at)
        head = mine[0]
        first.append(((head.claimed_at or head.created_at) - head.created_at).total_seconds())
        for done, nxt in itertools.pairwise(mine):
            if done.finished_at is not None and nxt.claimed_at is not None:
                between.append((nxt.claimed_at - done.finished_at).total_seconds())
    return between, first


def measure(n: int, args: argparse.Namespace, url: str, work: Path) -> dict[str, Samples]:
    """Start ``n`` workers, run ``args.runs`` batches; per-run rates and latencies."""
    (work / "config.toml").write_text(
        f'[storage]\ndir = "{work / "shared"}"\nreserve_mb = 0\n\n'
        f'[catalog]\nurl = "{url}"\n\n'
        '[converter]\nmodel = "classical"\ndevice = "cpu"\nthreads = 1\n\n'
        "[metrics]\nenabled = false\n\n[audit]\nenabled = false\n",
        encoding="utf-8",
    )
    env = os.environ | {ENVIRONMENT_VARIABLE: str(args.forward)}
    exe = Path(sys.executable).parent / "bonect-daemon"
    command = [str(exe), "--config", str(work / "config.toml"), "start", "--role", "worker"]
    logs = [work / f"worker{k}.log" for k in range(n)]
    workers = [Process(command, log, env=env) for log in logs]
    catalog = Catalog.open(url)
    samples = {key: Samples() for key in ("rate", "between_p50", "between_p95", "first")}
    try:
        for log in logs:
            wait_until(lambda log=log: "no DICOM port" in log.read_text(), log.name, timeout=300)
        for run in range(args.runs):
            queued_at = queue_batch(catalog, work / "shared" / "archive", run, args.series)

            def batch_done(run_start: datetime = queued_at) -> bool:
                jobs = [j for j in catalog.jobs() if j.created_at >= run_start]
                return all(j.state is JobState.DONE for j in jobs)

            wait_until(batch_done, f"{args.series} jobs with {n} worker(s)", timeout=3600)
            jobs = [j for j in catalog.jobs() if j.created_at >= queued_at]
            last = max(j.finished_at or queued_at for j in jobs)
            samples["rate"].add(len(jobs) / (last - queued_at).total_seconds() * 60)
            between, first = gaps(jobs)
            if between:
                samples["between_p50"].add(statistics.median(between))
                samples["between_p95"].add(sorted(between)[int(0.95 * (len(between) - 1))])
            samples["first"].add(statistics.median(first))
            print(f"  N={n} run {run + 1}: {samples['rate'].values[-1]:.1f} series/min",
                  file=sys.stderr, flush=True)  # fmt: skip
    finally:
        for worker in workers:
            worker.stop()
        catalog.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 series, N = 1, 2; smoke only")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--series", type=int, default=24, help="series per run")
    parser.add_argument("--forward", type=float, default=1.0, help="simulated forward, s")
    parser.add_argument("--workers", default="1,2,3,4")
    args = parser.parse_args(argv)
    if args.quick:
        args.series, args.forward, args.workers = (
            QUICK[k] for k in ("series", "forward", "workers")
        )
    name = "workers-quick" if args.quick else "workers"
    title = "Workers on one PostgreSQL catalog, simulated accelerator"
    if (reason := unavailable()) is not None:
        publish(name, header(title, command_line()) + "\n\n" + table(["skipped"], [[reason]]))
        return 0
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[int, dict[str, Samples]] = {}
    server = PostgresServer.start()
    try:
        for n in counts:
            with scratch(f"workers{n}-") as tmp:
                started = time.monotonic()
                results[n] = measure(n, args, server.schema_url(), Path(tmp))
                print(f"N={n}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    finally:
        server.stop()
    one = results[counts[0]]["rate"].median / counts[0]
    rows = []
    for n, s in results.items():
        ratio = s["rate"].median / (n * one)
        rows.append([
            n, s["rate"].median, f"{ratio:.2f} {verdict(ratio, 0.9)}" if n > 1 else "1.00",
            s["between_p50"].median, s["between_p95"].median, s["first"].median,
            s["rate"].spread(),
        ])  # fmt: skip
    text = "\n\n".join(
        [
            header(title, command_line()),
            f"{args.series} series of {SLICES[0]} x {SLICES[1]}² per run, simulated forward "
            f"{args.forward:g} s per series (ideal: {60 / args.forward:.0f} series/min per "
            f"worker), no destination; median of {args.runs} run(s).",
            table(
                [
                    "workers",
                    "series/min",
                    "ratio to N x 1 worker",
                    "done → next claim s (median)",
                    "(p95)",
                    "queued → first claim s",
                    "min-max series/min",
                ],
                rows,
            ),
        ]
    )
    publish(name, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
