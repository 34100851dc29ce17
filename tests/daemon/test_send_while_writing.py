"""The sCT is sent while it is written: the PACS has the first instance before the last is
written, and a writer that fails half-way costs nothing stored and duplicates nothing.

The node runs in-process (``conftest.py``); the writer is held, or made to fail, from inside
its ``on_written`` hand-off, so what the tests see does not depend on timing: a writer held
after its first file waits for the PACS to have that file, which only a sender that streams
can give it.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.events import Event

from bonect.catalog.jobs import JobState
from bonect.catalog.records import JobRecord
from bonect.catalog.tables import SendStatus
from bonect.config import SenderConfig
from bonect.daemon import worker as worker_module
from bonect.daemon.node import Node
from bonect.daemon.sender import DestinationNode, send_files
from bonect.phantom.cohort import WrittenPatient
from catalog.catalog_support import FakeClock
from daemon.node_support import (
    LOCALHOST,
    OpenNode,
    Pacs,
    assert_one_sct_series,
    count_dcmsend_runs,
    mr_files,
)
from dicom_peers import have

WAIT_S = 30.0  # only a failing test waits this long
needs_dcmsend = pytest.mark.skipif(not have("dcmsend"), reason="DCMTK dcmsend is not installed")


def _count_stores(pacs: Pacs, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], bool]:
    """Make ``pacs`` count what it stores; returns ``wait_for(n)``: True once it holds n."""
    stored = threading.Condition()
    keep = pacs.on_store

    def on_store(event: Event) -> int:
        status = keep(event)
        with stored:
            stored.notify_all()
        return status

    monkeypatch.setattr(pacs, "on_store", on_store)

    def wait_for(n: int) -> bool:
        with stored:
            return stored.wait_for(lambda: len(pacs.received) >= n, timeout=WAIT_S)

    return wait_for


def _hook_writer(
    monkeypatch: pytest.MonkeyPatch, after_each: Callable[[int, Path], None]
) -> list[bool]:
    """Call ``after_each(k, path)`` in the writer after its k-th file (from 1) was handed on;
    returns a list that gets True each time the worker wrote while streaming."""
    streamed: list[bool] = []
    write = worker_module.write_synthetic_ct

    def writing(*args: Any, on_written: Callable[[Path], None] | None = None, **kwargs: Any) -> Any:
        streamed.append(on_written is not None)
        written = 0

        def hand_on(path: Path) -> None:
            nonlocal written
            assert on_written is not None
            on_written(path)
            written += 1
            after_each(written, path)

        return write(*args, on_written=None if on_written is None else hand_on, **kwargs)

    monkeypatch.setattr(worker_module, "write_synthetic_ct", writing)
    return streamed


def _send_series(node: Node, mr: list[Path]) -> None:
    report = send_files(
        mr, DestinationNode("BONECT", LOCALHOST, node.server.port), calling_ae="MODALITY"
    )
    assert report.all_stored
    assert node.wake.wait(timeout=WAIT_S)  # the release was recorded


def _convert_holding_the_writer(
    node: Node, pacs: Pacs, clock: FakeClock, mr: list[Path], monkeypatch: pytest.MonkeyPatch
) -> tuple[JobRecord, list[bool], list[tuple[bool, JobState]]]:
    """Send ``mr`` to the node and run its job with the writer held after its first file until
    the PACS has that file; the job after the step, whether each write streamed, and (did the
    PACS get file 1, the job's state) as seen while the writer was held."""
    wait_for = _count_stores(pacs, monkeypatch)
    seen_while_writing: list[tuple[bool, JobState]] = []

    def after_each(k: int, path: Path) -> None:
        if k == 1:
            (job,) = node.catalog.jobs()
            seen_while_writing.append((wait_for(1), job.state))

    streamed = _hook_writer(monkeypatch, after_each)
    _send_series(node, mr)
    assert node.step(clock.now()) is True
    (job,) = node.catalog.jobs()
    return job, streamed, seen_while_writing


def test_the_pacs_has_the_first_instance_before_the_last_is_written(
    node: Node,
    pacs: Pacs,
    clock: FakeClock,
    phantom_written: WrittenPatient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mr = mr_files(phantom_written)
    job, streamed, seen_while_writing = _convert_holding_the_writer(
        node, pacs, clock, mr, monkeypatch
    )

    assert job.state is JobState.DONE, job.last_error
    assert streamed == [True]
    # the PACS stored instance 1 while the other instances were not yet written, and the job
    # was still converting (not yet marked converted)
    assert seen_while_writing == [(True, JobState.RUNNING)]
    assert_one_sct_series(pacs, mr)
    assert {s.status for s in node.catalog.sends(job)} == {SendStatus.STORED}
    assert {"write", "send"} <= set(job.timings)


def test_a_writer_failing_half_way_keeps_what_was_stored_and_the_retry_sends_the_rest_once(
    node: Node,
    pacs: Pacs,
    clock: FakeClock,
    phantom_written: WrittenPatient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mr = mr_files(phantom_written)
    half = len(mr) // 2
    wait_for = _count_stores(pacs, monkeypatch)
    failures = 1

    def after_each(k: int, path: Path) -> None:
        nonlocal failures
        if k == half and failures:  # the disk fills once the PACS has half the series
            failures -= 1
            assert wait_for(half)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    streamed = _hook_writer(monkeypatch, after_each)
    _send_series(node, mr)

    assert node.step(clock.now()) is True
    (job,) = node.catalog.jobs()
    assert job.state is JobState.RETRY_WAIT
    assert "No space left" in (job.last_error or "")
    assert job.output_dir is None  # not converted: the next attempt writes it again
    sends = node.catalog.sends(job)
    assert len(sends) == len(mr)  # planned before the first file was written
    assert sum(s.status is SendStatus.STORED for s in sends) == half == len(pacs.received)

    assert node.step(clock.advance(3600)) is True  # the retry converts and writes again
    (job,) = node.catalog.jobs()
    assert job.state is JobState.DONE, job.last_error
    assert streamed == [True, True]
    assert_one_sct_series(pacs, mr)  # every instance once: the stored half was not sent again
    assert {s.status for s in node.catalog.sends(job)} == {SendStatus.STORED}


@needs_dcmsend
def test_with_dcmsend_each_batch_the_writer_has_ready_is_sent_while_it_writes(
    open_node: OpenNode,
    pacs: Pacs,
    clock: FakeClock,
    phantom_written: WrittenPatient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dcmsend takes files in batches: a process for what is written each time the previous
    one ends, the first while the writer is held after its first file."""
    node = open_node([pacs.destination("pacs")], sender=SenderConfig(transport="dcmsend"))
    runs = count_dcmsend_runs(monkeypatch)
    mr = mr_files(phantom_written)
    job, streamed, seen_while_writing = _convert_holding_the_writer(
        node, pacs, clock, mr, monkeypatch
    )

    assert job.state is JobState.DONE, job.last_error
    assert streamed == [True]
    assert seen_while_writing == [(True, JobState.RUNNING)]
    assert runs[0] == 1 and sum(runs) == len(mr)  # the first file alone, the rest after
    assert_one_sct_series(pacs, mr)
    assert {s.status for s in node.catalog.sends(job)} == {SendStatus.STORED}
