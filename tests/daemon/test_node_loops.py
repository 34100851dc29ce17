"""The running node's loops (:meth:`Node.run`): settling never waits for a running conversion.

A node that receives and converts settles in a thread of its own. The conversion here is the
simulated one (``daemon.simulated``), held open by the test until the second series has been
settled and queued: before the two loops, settling ran between jobs and waited for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

import bonect.daemon.worker as worker_module
from bonect.catalog.jobs import JobState
from bonect.converter.pipeline import Conversion
from bonect.converter.volume import Volume
from bonect.daemon.node import Node
from bonect.daemon.sender import DestinationNode, send_files
from bonect.daemon.simulated import ENVIRONMENT_VARIABLE
from bonect.phantom.cohort import WrittenPatient
from daemon.node_support import LOCALHOST, OpenNode, Pacs, mr_files

DEADLINE_S = 60.0  # a bound on a loaded machine, not a timing


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S:.0f} s: {what}")
        time.sleep(0.05)


def another_series(files: list[Path], folder: Path) -> list[Path]:
    """The same images as a new series of the same study (new series and instance UIDs)."""
    folder.mkdir()
    series_uid = generate_uid()
    copies = []
    for path in files:
        ds = dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        copies.append(folder / path.name)
        ds.save_as(copies[-1])
    return copies


class HeldConversion:
    """The simulated conversion, each one held until :meth:`release`."""

    def __init__(self, simulate: Callable[[Volume, float], Conversion]) -> None:
        self._simulate = simulate
        self.started = threading.Event()
        self._released = threading.Event()

    def __call__(self, mr: Volume, seconds: float) -> Conversion:
        self.started.set()
        if not self._released.wait(DEADLINE_S):
            raise RuntimeError("the test never released the conversion")
        return self._simulate(mr, seconds)

    def release(self) -> None:
        self._released.set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldConversion]:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")  # read by Node.open: the simulated conversion
    conversion = HeldConversion(worker_module.simulate)
    monkeypatch.setattr(worker_module, "simulate", conversion)
    yield conversion
    conversion.release()


def job_states(node: Node) -> dict[str, JobState]:
    return {job.series_uid: job.state for job in node.catalog.jobs()}


def test_a_series_sent_during_a_conversion_is_queued_before_the_conversion_ends(
    open_node: OpenNode,
    pacs: Pacs,
    phantom_written: WrittenPatient,
    held: HeldConversion,
    tmp_path: Path,
) -> None:
    node = open_node([pacs.destination("pacs")])
    to_node = DestinationNode("BONECT", LOCALHOST, node.server.port)
    first = mr_files(phantom_written)
    second = another_series(first, tmp_path / "second")
    first_uid, second_uid = (dcmread(f[0]).SeriesInstanceUID for f in (first, second))
    stop = threading.Event()
    running = threading.Thread(target=node.run, args=(stop,), name="test-node-run")
    running.start()
    try:
        assert send_files(first, to_node, calling_ae="MODALITY").all_stored
        assert held.started.wait(DEADLINE_S), "the first series was never converted"
        assert send_files(second, to_node, calling_ae="MODALITY").all_stored

        wait_until(lambda: second_uid in job_states(node), "the second series queued")
        states = job_states(node)
        assert states[first_uid] == JobState.RUNNING  # still held: nothing waited for it
        assert states[second_uid] == JobState.QUEUED

        held.release()
        wait_until(lambda: set(job_states(node).values()) == {JobState.DONE}, "both jobs done")
    finally:
        held.release()
        stop.set()
        running.join(DEADLINE_S)
    assert not running.is_alive()
    assert len(pacs.received) == len(first) + len(second)
    assert len({d.SeriesInstanceUID for d in pacs.received}) == 2
