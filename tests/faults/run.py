"""Run the fault matrix (:mod:`faults.matrix`) by command and print its table.

From the repository root, with the venv's Python::

    nice -n 10 python tests/faults/run.py --runs 10 --slices 300
    python tests/faults/run.py --runs 1 --stages receive,send --seed 7 --keep

Each stage runs ``--runs`` times on a bone-MR phantom series of about ``--slices`` slices
(rendered once, cached in ``--cache``); ``--prior-slices`` is the CT the prior stage retrieves
(``--slices`` by default); ``--pacs-down`` is how long the PACS stays down in the pacs_down
stage (120 s by default). A markdown table per stage (runs, lost, duplicated, missing,
stuck, the kill moments) is printed and written to ``--out``; the exit status is 1 when any
figure is not 0. The suite's short version is ``tests/e2e/test_fault_matrix.py``: the same
code, one run per stage on a small series.

This file is a script (tests/ is not a package): it puts tests/ first on ``sys.path`` so that
the matrix imports as the test suite imports it (``faults.matrix``, ``e2e.conftest``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from bonect.phantom.cohort import write_patient  # noqa: E402
from bonect.phantom.generate import Acquisition, generate_case  # noqa: E402
from e2e.conftest import Series  # noqa: E402
from faults.matrix import KILL_STAGES, STAGES, Matrix, RunResult, table  # noqa: E402

#: The phantom head spans about 270 mm axially: 0.85 mm slices give 316 (SLICES_300).
HEAD_MM = 0.85 * 316


def bone_mr(slices: int, cache: Path) -> Series:
    """An axial bone-MR phantom series of about ``slices`` slices of 4 x 4 mm pixels."""
    folder = cache / f"mr-{slices}"
    files = sorted(folder.rglob("*.dcm"))
    if not files:
        acquisition = Acquisition("axial", (HEAD_MM / slices, 4.0, 4.0))
        case = generate_case(44, 0, acquisition=acquisition, ct_acquisition=None)
        written = write_patient(case, 44, folder)
        files = sorted(written.mr_dicom.glob("*.dcm"))
    return Series.of(files)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per stage (default 10)")
    parser.add_argument("--first", type=int, default=0, help="number of the first run (0)")
    parser.add_argument("--slices", type=int, default=300, help="MR slices (default 300)")
    parser.add_argument("--prior-slices", type=int, default=0, help="CT slices (--slices)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated")
    parser.add_argument("--seed", type=int, default=None, help="default: drawn and printed")
    parser.add_argument("--deadline", type=float, default=300.0, help="s after the restart")
    parser.add_argument(
        "--pacs-down", type=float, default=120.0, help="s the PACS is down (pacs_down stage)"
    )
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--cache", type=Path, default=Path("var/faults-cache"))
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep every run's folder")
    parser.add_argument(
        "--transport",
        choices=("pynetdicom", "dcmsend"),
        default="pynetdicom",
        help="[sender] transport of the daemon under test",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="append each run to this JSON-lines file; the table then covers every run in it "
        "(e.g. a run redone with --first after it broke on something not under test)",
    )
    args = parser.parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = set(args.stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: each run's daemon and Orthanc are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    mr = bone_mr(args.slices, args.cache)
    work = args.work or Path(tempfile.mkdtemp(prefix="bonect-faults-"))
    matrix = Matrix(
        mr=mr,
        work=work,
        seed=seed,
        prior_slices=args.prior_slices or args.slices,
        deadline_s=args.deadline,
        pacs_down_s=args.pacs_down,
        keep=args.keep,
        transport=args.transport,
    )
    print(
        f"seed {seed}, {len(mr)} MR slices, {args.transport} transport, work folder {work}",
        flush=True,
    )
    started = time.monotonic()
    results: list[RunResult] = []
    for run in range(args.first, args.first + args.runs):  # stages interleaved: load from
        for stage in args.stages:  # elsewhere hits them alike
            result = matrix.run(stage, run)
            results.append(result)
            print(result.line(), flush=True)
            if args.results is not None:
                with args.results.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(dataclasses.asdict(result)) + "\n")
    if args.results is not None:
        results = [RunResult(**json.loads(line)) for line in args.results.read_text().splitlines()]
    report = "\n".join(
        [
            f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"- machine: {platform.node()}, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}",
            f"- command: {' '.join(sys.argv)}",
            f"- seed {seed}; {len(mr)} MR slices; prior CT {matrix.prior_slices} slices; "
            f"{args.transport} transport; "
            f"kill stages {', '.join(s for s in args.stages if s in KILL_STAGES)}; "
            f"wall time {time.monotonic() - started:.0f} s"
            + (
                f"; conversion (claim to first sCT stored, median of the unfaulted ones) "
                f"{statistics.median(matrix.convert_s):.2f} s"
                if matrix.convert_s
                else ""
            ),
            "",
            table(results),
            "",
        ]
    )
    print(report)
    if args.out is not None:
        args.out.write_text(report, encoding="utf-8")
    return 0 if all(r.clean for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
