"""The fault matrix, short: one run per stage on the 57-slice phantom series.

`bonect-daemon start` is killed (SIGKILL) at a seeded random moment of receive, settle, convert,
the send of a half-written sCT series, send and prior retrieval, and started again; the PACS
answers 0xA700 / 0xC000 to first attempts; another process locks the catalog mid-series; the
PACS (Orthanc) goes down mid-send for a few seconds (``PACS_DOWN_S``; the long version's outage
is 2 min) and comes back on the same port and storage. Each run must end with nothing lost,
duplicated, missing or stuck at the PACS (:mod:`faults.matrix` counts, and says how). The long
version is the same code by command: ``python tests/faults/run.py --runs 10 --slices 300``.

The seed is drawn per session and printed with every run (``BONECT_FAULT_SEED=<seed>`` replays
it). A kill whose outside poll was too slow for its stage (the stage ended between the poll
and the kill) is drawn again, up to twice, so that each stage is tested where it is meant to be.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator

import pytest

from e2e.conftest import Series, needs_peers
from faults.matrix import STAGES, Matrix, RunResult

pytestmark = needs_peers

PRIOR_SLICES = 60
DEADLINE_S = 120.0
PACS_DOWN_S = 4.0  # the long version's outage is 2 min; the backoff (1-4 s) is the same
SEED = int(os.environ.get("BONECT_FAULT_SEED") or random.SystemRandom().randrange(10**6))


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, coarse_mr: Series) -> Iterator[Matrix]:
    """The matrix over the coarse series (the runs share what they saw of the conversion)."""
    yield Matrix(
        mr=coarse_mr,
        work=tmp_path_factory.mktemp("faults"),
        seed=SEED,
        prior_slices=PRIOR_SLICES,
        deadline_s=DEADLINE_S,
        pacs_down_s=PACS_DOWN_S,
    )


@pytest.mark.parametrize("stage", STAGES)
def test_a_fault_in_each_stage_loses_duplicates_and_strands_nothing(
    matrix: Matrix, stage: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="faults")
    result: RunResult = matrix.run(stage, 0)
    for draw in (1, 2):  # the poll lost a race with the daemon: draw the moment again
        if result.in_stage or result.error:
            break
        result = matrix.run(stage, draw)
    replay = f"BONECT_FAULT_SEED={SEED}: {result.line()}"
    assert not result.error, replay
    assert result.in_stage, replay
    assert (result.lost, result.duplicated, result.missing, result.stuck) == (0, 0, 0, 0), replay
    assert result.moment and result.landed, replay
