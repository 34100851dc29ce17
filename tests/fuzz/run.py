"""Run one fuzz target under atheris (libFuzzer, coverage-guided) for a time or a number of runs.

From the repository root, with the venv's Python::

    python tests/fuzz/run.py --target receive --minutes 10
    python tests/fuzz/run.py --target reader --minutes 10 --corpus var/fuzz/reader
    python tests/fuzz/run.py --target receive crash-<sha1>      # replay inputs, once each

The targets are :mod:`fuzz.receive_target` (the C-STORE receive path) and
:mod:`fuzz.reader_target` (the series reader); bonect and pydicom are instrumented for coverage.
The seed corpus (each target's ``seeds()``) is written into ``--corpus`` (a temporary folder
by default), where libFuzzer also keeps the inputs that found new coverage. An input that
breaks an invariant is written to ``--artifacts`` as ``crash-<sha1>`` and the run stops with a
non-zero exit status; libFuzzer prints its figures (``cov:``, ``exec/s``, and the
``stat::number_of_executed_units`` of the run) on stderr. ``tests/fuzz/test_fuzz_bounded.py``
runs this with a fixed seed and a fixed number of runs, in the suite; docs/reliability.md has
the long runs.

This file is a script (tests/ is not a package): it puts tests/ first on ``sys.path`` so that
the targets import as the test suite imports them (``fuzz.receive_target``, ``series_factory``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import atheris  # noqa: E402

TARGETS = ("receive", "reader")
INSTRUMENTED = ["bonect", "pydicom"]
Harness = Callable[[bytes], None]


def _load(target: str) -> tuple[Callable[[], list[bytes]], Callable[[Path], Harness]]:
    """A target's seeds and harness class, imported with bonect and pydicom instrumented."""
    with atheris.instrument_imports(include=INSTRUMENTED):
        if target == "receive":
            from fuzz.receive_target import ReceiveTarget, seeds

            return seeds, ReceiveTarget
        from fuzz.reader_target import ReaderTarget
        from fuzz.reader_target import seeds as reader_seeds

        return reader_seeds, ReaderTarget


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--minutes", type=float, default=1.0, help="how long (default 1)")
    parser.add_argument("--runs", type=int, default=-1, help="stop after this many inputs")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--corpus", type=Path, help="seed and coverage corpus folder")
    parser.add_argument("--artifacts", type=Path, default=Path("."), help="where crashes go")
    parser.add_argument("--workdir", type=Path, help="the target's scratch folder")
    parser.add_argument("inputs", nargs="*", type=Path, help="replay these inputs, once each")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Fuzz (or replay inputs); libFuzzer exits the process when done."""
    args = parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom warns on every malformed value: millions of lines
    logging.getLogger("bonect").setLevel(logging.ERROR)  # the targets watch ERROR records
    seeds, harness = _load(args.target)
    if args.workdir is None or args.corpus is None:  # kept: libFuzzer exits the process
        scratch = Path(tempfile.mkdtemp(prefix=f"bonect-fuzz-{args.target}-"))
        args.workdir = args.workdir or scratch / "work"
        args.corpus = args.corpus or scratch / "corpus"
    workdir, corpus = Path(args.workdir), Path(args.corpus)
    workdir.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(seeds()):
        (corpus / f"seed-{n:02d}").write_bytes(seed)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    libfuzzer = [
        sys.argv[0],
        f"-seed={args.seed}",
        f"-artifact_prefix={args.artifacts}/",
        "-timeout=60",  # seconds for one input: a hang is a crash too
        "-rss_limit_mb=3072",
        "-print_final_stats=1",
    ]
    if args.inputs:
        libfuzzer += [str(path) for path in args.inputs]
    else:
        libfuzzer += [f"-max_total_time={max(1, round(args.minutes * 60))}", str(corpus)]
        if args.runs >= 0:
            libfuzzer.append(f"-runs={args.runs}")
    print(f"fuzzing {args.target} in {workdir}, corpus {corpus}", file=sys.stderr, flush=True)
    atheris.Setup(libfuzzer, harness(workdir))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
