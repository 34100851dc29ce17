"""The whole node in-process: C-STORE or drop folder in, sCT out to a PACS, one step at a time.

The node listens on port 0 with a temporary storage folder and no metrics server; the PACS is
an in-process pynetdicom Storage SCP on port 0 that keeps what it receives (``conftest.py``).
The loop is driven with :meth:`Node.step` and a fake clock: nothing here sleeps.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from bonect.catalog.jobs import JobState
from bonect.config import Config
from bonect.daemon.node import Node, access_policy, source_addresses
from bonect.daemon.sender import DestinationNode, send_files
from bonect.phantom.cohort import WrittenPatient
from catalog.catalog_support import FakeClock
from daemon.node_support import (
    LOCALHOST,
    OpenNode,
    Pacs,
    assert_no_patient_identity_logged,
    assert_one_sct_series,
    mr_files,
)


def test_a_stored_bone_mr_series_comes_back_as_sct(
    node: Node,
    pacs: Pacs,
    clock: FakeClock,
    phantom_written: WrittenPatient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bonect")
    mr = mr_files(phantom_written)
    report = send_files(
        mr, DestinationNode("BONECT", LOCALHOST, node.server.port), calling_ae="MODALITY"
    )
    assert report.all_stored
    assert node.wake.wait(timeout=30.0)  # the association's release was recorded
    assert node.metrics.registry.get_sample_value("bonect_instances_received_total") == len(mr)

    # released and geometry complete: settled, converted and sent without the quiet timer
    assert node.step(clock.now()) is True
    (job,) = node.catalog.jobs()
    assert job.state == JobState.DONE, job.last_error
    assert set(job.timings) >= {"read", "convert", "write", "send"}
    assert node.metrics.registry.get_sample_value("bonect_series_completed_total") == 1
    assert_one_sct_series(pacs, mr)

    assert node.step(clock.advance(3600)) is False  # nothing left to do
    assert len(pacs.received) == len(mr)
    assert_no_patient_identity_logged(caplog, mr)


def test_files_dropped_into_import_are_converted(
    node: Node,
    pacs: Pacs,
    clock: FakeClock,
    phantom_written: WrittenPatient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bonect")
    mr = mr_files(phantom_written)
    target = node.config.storage.dir / "import" / "from-cd"
    target.mkdir(parents=True)
    for path in mr:
        shutil.copy(path, target / path.name)

    first = node.dropfolder.ingest_once()  # sizes noted: a copy may still be in progress
    assert (first.waiting, first.ingested) == (len(mr), ())
    second = node.dropfolder.ingest_once()  # unchanged since: complete
    assert len(second.ingested) == len(mr)
    assert not any(target.iterdir())

    assert node.step(clock.now()) is True
    (job,) = node.catalog.jobs()
    assert job.state == JobState.DONE, job.last_error
    assert_one_sct_series(pacs, mr)
    assert_no_patient_identity_logged(caplog, mr)


def test_a_series_that_never_completes_its_geometry_settles_after_the_quiet_time(
    node: Node, pacs: Pacs, clock: FakeClock, phantom_written: WrittenPatient
) -> None:
    mr = mr_files(phantom_written)
    partial = mr[:10] + mr[12:]  # two slices missing: geometry incomplete
    report = send_files(
        partial, DestinationNode("BONECT", LOCALHOST, node.server.port), calling_ae="MODALITY"
    )
    assert report.all_stored
    assert node.wake.wait(timeout=30.0)
    assert node.step(clock.now()) is False  # released, but not complete: wait
    assert node.catalog.jobs() == []

    clock.advance(node.config.settle.quiet_seconds + 1)
    assert node.step(clock.now()) is True  # quiet: settled, then the converter judges it
    (job,) = node.catalog.jobs()
    assert job.state == JobState.FAILED
    assert job.last_error  # the reason, for `bonect-daemon status`
    assert pacs.received == []


def test_opening_the_node_removes_partial_writes_of_a_killed_process(
    tmp_path: Path, open_node: OpenNode
) -> None:
    stray = tmp_path / "var0" / "archive" / "incoming" / "1.2.3" / ".abc.part"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half an instance")
    open_node([])
    assert not stray.exists()


def test_move_answers_are_expected_only_from_the_source_hosts() -> None:
    def sources(*hosts: str) -> Config:
        entries = [
            {"name": f"s{k}", "ae_title": "PACS", "host": host, "port": 104}
            for k, host in enumerate(hosts)
        ]
        return Config.model_validate({"sources": entries})

    assert source_addresses(sources()) == []  # no sources: no C-MOVE of ours to answer
    assert "127.0.0.1" in source_addresses(sources("localhost", "10.1.2.3"))
    assert "10.1.2.3" in source_addresses(sources("localhost", "10.1.2.3"))
    assert source_addresses(sources("no-such-host.invalid")) == []  # logged, not fatal
    policy = access_policy(sources("10.1.2.3"))
    assert policy.allows_move_answer("10.1.2.3") and not policy.allows_move_answer("10.1.2.4")
