"""The benchmarks in bench/ still run: their helpers, and (slow) each one with ``--quick``.

The smoke runs use tiny series, a 32² model input and one run; they check that each command
finishes and prints its table, never how fast anything was (timings belong to bench/README.md).
Generated series and reports go to temporary folders (``$BONECT_BENCH_CACHE``,
``$BONECT_BENCH_OUT``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
sys.path.append(str(BENCH))  # appended: bench/ must not shadow the tests' modules

import common  # noqa: E402

PEERS = all(shutil.which(p) for p in ("storescu", "storescp", "Orthanc"))


def test_table_and_verdict() -> None:
    text = common.table(["a", "b"], [["x", 1.23456], ["y", 12345.6]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x | 1.23 |", "| y | 12346 |"]
    assert common.verdict(0.9, 0.8).startswith("met")
    assert common.verdict(2.0, 1.5, at_least=False).startswith("MISSED")


def test_median_of_samples() -> None:
    samples = common.Samples()
    for value in (3.0, 1.0, 2.0):
        samples.add(value)
    assert samples.median == 2.0
    assert samples.spread() == "1-3"


@pytest.mark.skipif(not PEERS, reason="needs DCMTK")
def test_dcmtk_tools_are_dcmtk_not_pynetdicom_scripts() -> None:
    path = Path(common.dcmtk("storescu"))
    head = path.read_bytes()[:64]
    assert not head.startswith(b"#!"), f"{path} is a script, not DCMTK's storescu"


BENCHMARKS = ["ingest", "send", "convert", "end_to_end", "train", "workers", "soak"]


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bench")
    return {
        **os.environ,
        "BONECT_BENCH_CACHE": str(root / "cache"),
        "BONECT_BENCH_OUT": str(root / "out"),
    }


@pytest.mark.slow
@pytest.mark.skipif(not PEERS, reason="needs DCMTK and Orthanc (scripts/install-system-deps)")
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_quick(name: str, bench_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--runs", "1"],
        cwd=REPO,
        env=bench_env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "|---|" in done.stdout
    assert (Path(bench_env["BONECT_BENCH_OUT"]) / f"{name}-quick.md").is_file()
