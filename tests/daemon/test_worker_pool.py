"""Several worker processes on one PostgreSQL catalog: each series converted once, a dead
worker's job taken over after its lease (issue 15, "Several hosts, one catalog").

Three ``bonect-daemon start --role worker`` processes share a PostgreSQL catalog
(:mod:`catalog.postgres`, skipped where there is none) and a storage folder, as hosts share it
over a network file system. Their conversion is simulated (``BONECT_SIMULATED_FORWARD_SECONDS``,
:mod:`bonect.daemon.simulated`: a fixed sleep, as a GPU host's forward pass would be), so the
two cores of a CI machine are not what is measured; reading the MR, writing the sCT DICOM,
sending it to an in-process PACS and every catalog record are the real code. One worker is
killed (SIGKILL) while it converts; once its short lease has ended another takes its job over.
Waiting on the processes is a bounded poll of the catalog, as in ``tests/e2e``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bonect.catalog import Catalog, JobState
from bonect.catalog.records import JobRecord
from bonect.daemon.simulated import ENVIRONMENT_VARIABLE
from bonect.dicom.header import read_header
from catalog.postgres import PostgresServer, unavailable
from daemon.node_support import Pacs
from series_factory import make_mr_series, write_series

DAEMON = Path(sys.executable).parent / "bonect-daemon"
WORKERS = 3
SERIES = 20
SLICES = 4
FORWARD_S = 1.0  # the simulated forward pass of each job
LEASE_S = 3  # short: the dead worker's job is taken over within seconds
POLL_S = 0.05


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if (reason := unavailable()) is not None:
        pytest.skip(f"PostgreSQL: {reason}")
    server = PostgresServer.start()
    yield server
    server.stop()


def wait_for(predicate: Callable[[], bool], what: str, logs: list[Path], timeout: float) -> None:
    """Poll ``predicate`` until true (bounded: other processes' state, no event to await)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs
            )
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(POLL_S)


def queue_series(catalog: Catalog, archive: Path, now: datetime) -> dict[str, int]:
    """Write SERIES small bone-MR series to the shared archive and queue a job for each."""
    jobs = {}
    for k in range(SERIES):
        datasets = make_mr_series(
            (SLICES, 16, 16), seed=k, patient_id=f"SYN{k:04d}", series_description="ZTE bone"
        )
        series_uid = str(datasets[0].SeriesInstanceUID)
        paths = write_series(datasets, archive / series_uid)
        for dataset, path in zip(datasets, paths, strict=True):
            catalog.record_instance(
                read_header(dataset), path, received_at=now, association_id=f"a{k}"
            )
        jobs[series_uid] = catalog.enqueue_job(series_uid, now)
    return jobs


def write_config(folder: Path, url: str, pacs: Pacs) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f"""
[storage]
dir = "{folder / "shared"}"
reserve_mb = 0

[catalog]
url = "{url}"
lease_seconds = {LEASE_S}

[converter]
model = "classical"
device = "cpu"
threads = 1

[metrics]
enabled = false

[audit]
enabled = false

[[destinations]]
name = "pacs"
ae_title = "{pacs.ae_title}"
host = "127.0.0.1"
port = {pacs.port}
"""
    )
    return path


def converting(catalog: Catalog, pids: set[int]) -> JobRecord | None:
    """A job one of ``pids`` is converting now (claimed, nothing written yet), or None."""
    for job in catalog.jobs(JobState.RUNNING):
        holder = (job.claimed_by or "").split(":")
        if len(holder) == 3 and int(holder[1]) in pids and job.output_dir is None:
            return job
    return None


def test_three_workers_convert_each_series_once_and_take_over_a_dead_ones_job(
    postgres: PostgresServer, pacs: Pacs, tmp_path: Path
) -> None:
    url = postgres.schema_url()
    catalog = Catalog.open(url)
    config = write_config(tmp_path, url, pacs)
    env = os.environ | {ENVIRONMENT_VARIABLE: str(FORWARD_S)}
    workers: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"worker{n}.log" for n in range(WORKERS)]
    try:
        for log in logs:
            with log.open("wb") as out:
                workers.append(
                    subprocess.Popen(
                        [str(DAEMON), "--config", str(config), "start", "--role", "worker"],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
        for log in logs:  # every worker up before the series come: they share the work
            wait_for(lambda log=log: "no DICOM port" in log.read_text(), log.name, logs, 120)
        archive = tmp_path / "shared" / "archive" / "incoming"
        queued = queue_series(catalog, archive, datetime.now(UTC))

        # a few jobs in, kill the worker of a job that is being converted
        found: list[JobRecord] = []

        def victim_found() -> bool:
            done = catalog.counts_by_state().get(JobState.DONE, 0)
            job = converting(catalog, {w.pid for w in workers}) if done >= WORKERS else None
            found.extend([job] if job is not None else [])
            return job is not None

        wait_for(victim_found, "a job being converted", logs, timeout=120)
        victim_job = found[0]
        victim = next(w for w in workers if f":{w.pid}:" in (victim_job.claimed_by or ""))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)

        def all_done() -> bool:
            return catalog.counts_by_state().get(JobState.DONE, 0) == SERIES

        wait_for(all_done, f"{SERIES} jobs done", logs, timeout=240)
        jobs = {job.id: job for job in catalog.jobs()}
        assert sorted(jobs) == sorted(queued.values())  # one job per series, no other
        taken = jobs.pop(victim_job.id)
        # the dead worker's job: finished by another, once its lease had ended
        assert taken.state is JobState.DONE and taken.attempts == 2
        assert taken.claimed_by != victim_job.claimed_by
        assert f"lease of {victim_job.claimed_by} ended" in (taken.last_error or "")
        assert taken.claimed_at is not None and victim_job.lease_until is not None
        assert taken.claimed_at > victim_job.lease_until
        # every other series converted once, never twice
        assert all(j.state is JobState.DONE and j.attempts == 1 for j in jobs.values())
        assert len({j.claimed_by for j in jobs.values()}) == WORKERS  # all three worked
        # the PACS holds each series' sCT exactly once: no instance twice
        uids = [str(d.SOPInstanceUID) for d in pacs.received]
        assert len(uids) == len(set(uids)) == SERIES * SLICES
        assert {str(d.SeriesInstanceUID) for d in pacs.received} == {
            j.output_series_uid for j in [taken, *jobs.values()]
        }
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=60) for worker in workers]
        catalog.close()
    assert sorted(codes) == sorted([0] * (WORKERS - 1) + [-signal.SIGKILL])
