"""The classical map has no planes: a destination that asks for uncertainty gets the sCT alone."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage

from bonect.catalog.jobs import JobState
from bonect.phantom.cohort import WrittenPatient
from catalog.catalog_support import FakeClock
from daemon.node_support import MakePacs, OpenNode
from daemon.test_generations import send_and_step


def test_the_classical_map_sends_no_uncertainty_object_and_says_so_once(
    make_pacs: MakePacs,
    open_node: OpenNode,
    clock: FakeClock,
    phantom_written: WrittenPatient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bonect.daemon.worker")
    pacs = make_pacs("PACS")
    node = open_node([pacs.destination("pacs", uncertainty="segmentation")])
    mr: list[Path] = sorted(phantom_written.mr_dicom.glob("*.dcm"))
    send_and_step(node, clock, mr)

    (job,) = node.catalog.jobs()
    assert job.state is JobState.DONE, job.last_error
    assert job.uncertainty is None
    assert len(pacs.received) == len(pacs.of_class(CTImageStorage)) == len(mr)  # the sCT alone
    assert {s.path.name[:3] for s in node.catalog.sends(job)} == {"CT_"}
    assert "Uncertainty" not in str(pacs.of_class(CTImageStorage)[0].ImageComments)
    said = [r for r in caplog.records if "no planes to compare" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO]
