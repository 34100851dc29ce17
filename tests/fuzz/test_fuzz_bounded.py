"""The fuzzers in the suite: each target's seeds pass, then a short atheris run finds no crash.

A run here is bounded by a number of inputs with a fixed libFuzzer seed (so that it is the same
run every time on the same code) and capped in time, about 15 s each with the start-up on a
2-core machine. The long runs are by command (``tests/fuzz/run.py``, docs/reliability.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.reader_target import ReaderTarget
from fuzz.reader_target import seeds as reader_seeds
from fuzz.receive_target import ReceiveTarget
from fuzz.receive_target import seeds as receive_seeds

RUN = Path(__file__).with_name("run.py")
RUNS = 1500  # inputs per target; ~5 s at the ~300 inputs/s measured here
CAP_SECONDS = 25  # a loaded machine stops earlier, never later


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_receive_seed_is_archived(tmp_path: Path) -> None:
    target = ReceiveTarget(tmp_path)
    try:
        for seed in receive_seeds():
            target(seed)  # checks the invariants
            assert len(target.sink.records) == 1
    finally:
        target.close()


def test_every_reader_seed_is_read(tmp_path: Path) -> None:
    target = ReaderTarget(tmp_path)
    inputs = reader_seeds()
    for seed in inputs:
        target(seed)
    assert target.read == len(inputs)


@pytest.mark.parametrize("target", ["receive", "reader"])
def test_a_bounded_fuzz_run_finds_no_crash(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    crashes = tmp_path / "crashes"
    command = [sys.executable, str(RUN), "--target", target, "--seed", "1"]
    command += ["--runs", str(RUNS), "--minutes", str(CAP_SECONDS / 60)]
    command += ["--artifacts", str(crashes), "--workdir", str(tmp_path / "work")]
    command += ["--corpus", str(tmp_path / "corpus")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    found = sorted(p.name for p in crashes.glob("*"))  # none if it never started
    assert result.returncode == 0 and not found, (
        f"{found} in {crashes}, replay with: python {RUN} --target {target} <file>\n"
        + result.stderr[-4000:]
    )
    executed = re.search(r"stat::number_of_executed_units: (\d+)", result.stderr)
    assert executed is not None and int(executed.group(1)) >= 100, result.stderr[-2000:]
