"""Roles and leases in the daemon: a receiver host and a worker host on one catalog and archive.

Two nodes in one process stand for two hosts: they share the storage folder (the shared file
system) and the catalog. SQLite is enough here, where the nodes take turns, one step at a time
with the fake clock; several worker processes on PostgreSQL are in ``test_worker_pool.py``.
The command line refuses ``--role receiver|worker`` on SQLite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bonect.catalog import Catalog, ClaimLost, JobState
from bonect.catalog.records import InstanceRecord, JobRecord
from bonect.cli_boundary import EXIT_CONFIG
from bonect.config import Config, ConverterConfig, MetricsConfig, NodeConfig, StorageConfig
from bonect.daemon.lease import LeaseKeeper
from bonect.daemon.node import Node
from bonect.daemon.roles import NodeRole, requeue_own_orphans
from bonect.daemon.sender import DestinationNode, send_files
from bonect.daemon.simulated import ENVIRONMENT_VARIABLE, simulated_forward_seconds
from bonect.errors import ConfigError
from bonect.phantom.cohort import WrittenPatient
from catalog.catalog_support import START, FakeClock, receive, series_headers
from daemon.node_support import LOCALHOST, Pacs, assert_one_sct_series, mr_files

DAEMON = Path(sys.executable).parent / "bonect-daemon"


def host_config(storage: Path, pacs: Pacs) -> Config:
    return Config(
        node=NodeConfig(port=0),
        storage=StorageConfig(dir=storage, reserve_mb=0),
        converter=ConverterConfig(model="classical", device="cpu"),
        metrics=MetricsConfig(enabled=False),
        destinations=(pacs.destination("pacs"),),
    )


@pytest.fixture
def hosts(tmp_path: Path, pacs: Pacs, clock: FakeClock) -> Iterator[tuple[Node, Node]]:
    """A receiver and a worker on one storage folder and catalog."""
    config = host_config(tmp_path / "shared", pacs)
    receiver = Node.open(config, role=NodeRole.RECEIVER, clock=clock.now)
    worker = Node.open(config, role=NodeRole.WORKER, clock=clock.now)
    yield receiver, worker
    worker.close()
    receiver.close()


def test_a_receiver_queues_and_a_worker_converts(
    hosts: tuple[Node, Node], pacs: Pacs, clock: FakeClock, phantom_written: WrittenPatient
) -> None:
    receiver, worker = hosts
    assert receiver.server is not None and receiver.worker is None and receiver.models is None
    assert worker.server is None and worker.dropfolder is None and worker.worker is not None
    mr = mr_files(phantom_written)
    report = send_files(
        mr, DestinationNode("BONECT", LOCALHOST, receiver.server.port), calling_ae="MODALITY"
    )
    assert report.all_stored
    assert receiver.wake.wait(timeout=30.0)  # released: settles at once

    assert receiver.step(clock.now()) is False  # settled and queued; converts nothing
    (job,) = receiver.catalog.jobs()
    assert job.state is JobState.QUEUED and pacs.received == []

    assert worker.step(clock.now()) is True
    (job,) = worker.catalog.jobs()
    assert job.state is JobState.DONE, job.last_error
    assert job.lease_until is None
    assert_one_sct_series(pacs, mr)
    assert receiver.model_label == "none (receiver)"


class TakenWhileReading(Catalog):
    """A catalog through which the worker reads its series while another worker takes its job
    (as if its lease had ended while it was cut off): the instances are read, then the job is
    requeued and claimed by ``elsewhere``."""

    taken: JobRecord | None = None

    def instances(self, series_uid: str) -> list[InstanceRecord]:
        found = super().instances(series_uid)
        (job,) = self.jobs()
        if self.taken is None and job.claimed_by is not None:
            now = job.claimed_at or START
            self.requeue_orphans(now, claimed_by=job.claimed_by)
            self.taken = self.claim_next(now, "elsewhere:1:0")
        return found


def test_a_worker_whose_job_was_taken_stops_before_writing(
    hosts: tuple[Node, Node], pacs: Pacs, clock: FakeClock, phantom_written: WrittenPatient
) -> None:
    receiver, worker = hosts
    assert receiver.server is not None and worker.worker is not None
    mr = mr_files(phantom_written)
    send_files(mr, DestinationNode("BONECT", LOCALHOST, receiver.server.port), calling_ae="MR")
    assert receiver.wake.wait(timeout=30.0)
    receiver.step(clock.now())
    taking = TakenWhileReading(worker.catalog.engine)
    worker.worker.catalog = taking

    assert worker.step(clock.now()) is True  # never raises: the job is left to its holder
    assert taking.taken is not None
    (job,) = worker.catalog.jobs()
    assert (job.state, job.claimed_by) == (JobState.RUNNING, "elsewhere:1:0")
    assert list((worker.outgoing / job.series_uid).glob("job*")) == []  # nothing written
    assert pacs.received == [] and worker.worker.unrecorded is None


class CountingCatalog(Catalog):
    """A catalog that tells when a lease was renewed."""

    renewed = threading.Event()

    def renew_lease(self, job: JobRecord, *, now: datetime, lease: timedelta) -> datetime:
        until = super().renew_lease(job, now=now, lease=lease)
        self.renewed.set()
        return until


def test_the_lease_keeper_renews_until_the_job_is_taken(tmp_path: Path) -> None:
    clock = FakeClock()
    catalog = CountingCatalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    catalog.renewed = threading.Event()
    try:
        receive(catalog, series_headers(3), clock.now())
        catalog.enqueue_job(series_headers(3)[0].series_uid, clock.now())
        lease = timedelta(seconds=0.3)
        job = catalog.claim_next(clock.now(), "w1", lease=lease)
        assert job is not None
        keeper = LeaseKeeper.start(catalog, job, lease=lease, clock=clock.now)
        try:
            assert catalog.renewed.wait(timeout=30.0)  # on its own, every 0.1 s
            clock.advance(10)
            catalog.renewed.clear()
            assert catalog.renewed.wait(timeout=30.0)
            renewed = catalog.job(job.id)
            assert renewed is not None and renewed.lease_until is not None
            assert renewed.lease_until >= clock.now() + lease
            catalog.requeue_orphans(clock.now(), claimed_by="w1")  # taken from it
            with pytest.raises(ClaimLost):
                keeper.renew()
            assert keeper.lost is not None
        finally:
            keeper.stop()
    finally:
        catalog.close()


def test_a_start_requeues_only_the_jobs_of_this_hosts_stopped_processes(tmp_path: Path) -> None:
    """Several worker processes may share a host: a job of a live one is left to it."""
    clock = FakeClock()
    stopped = subprocess.Popen(["true"])  # a pid that has exited
    stopped.wait()
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    try:
        holders = {
            "host:": [f"host:{stopped.pid}:0", f"host:{os.getpid()}:0"],
            "other:": [f"other:{stopped.pid}:0"],
        }
        claimed = {}
        for k, holder in enumerate(h for hs in holders.values() for h in hs):
            uid = f"1.2.826.0.1.3680043.8.498.{300 + k}"
            receive(catalog, series_headers(2, uid), clock.now())
            catalog.enqueue_job(uid, clock.now())
            job = catalog.claim_next(clock.now(), holder, lease=timedelta(seconds=60))
            assert job is not None
            claimed[holder] = job.id
        assert requeue_own_orphans(catalog, clock.now(), "host:") == [
            claimed[f"host:{stopped.pid}:0"]
        ]
        assert catalog.holders_in_flight() == {f"host:{os.getpid()}:0", f"other:{stopped.pid}:0"}
    finally:
        catalog.close()


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DAEMON), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_start_refuses_a_role_on_sqlite_and_help_names_the_roles(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[storage]\ndir = "var"\n\n[metrics]\nenabled = false\n')
    for role in ("worker", "receiver"):
        refused = run(config, "start", "--role", role)
        assert refused.returncode == EXIT_CONFIG
        assert f"catalog.url: --role {role} needs a catalog" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "var" / "catalog.sqlite3").exists()  # refused before opening
    shown = run(config, "start", "--help")
    assert "--role {all,receiver,worker}" in shown.stdout
    assert "opens no DICOM port" in " ".join(shown.stdout.split())
    checked = run(config, "check-config")
    assert checked.returncode == 0
    assert "start --role all only" in checked.stdout


def test_the_simulated_conversion_is_off_unless_set_and_refuses_nonsense() -> None:
    assert simulated_forward_seconds({}) is None
    assert simulated_forward_seconds({ENVIRONMENT_VARIABLE: "0.5"}) == 0.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ConfigError, match=ENVIRONMENT_VARIABLE):
            simulated_forward_seconds({ENVIRONMENT_VARIABLE: bad})
