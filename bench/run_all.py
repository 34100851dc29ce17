"""Every benchmark in turn, each as its own command; the reports are also kept in bench/out/.

    python bench/run_all.py [--quick] [--runs N] [--only ingest,send,convert,end_to_end,...]

``--only`` takes a comma-separated list of: ingest, send, convert, end_to_end, train, workers,
soak.

Extra arguments after ``--`` go to every benchmark. The conversion runs at 256 x 256 x 200 only;
the 512 x 512 x 400 volume (``python bench/convert.py --sizes 512``) adds about 15 minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import BENCH, OUT

BENCHMARKS = {
    "ingest": [],
    "send": [],
    "convert": ["--sizes", "256"],
    "end_to_end": [],
    "train": [],
    "workers": [],  # needs PostgreSQL (tests/catalog/postgres.py); says "skipped" without it
    "soak": [],  # one run whatever --runs says; full size ~5 min (--quick ~20 s)
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only.split(","):
        extra = [] if args.quick and name == "convert" else BENCHMARKS[name]
        command = [sys.executable, str(BENCH / f"{name}.py"), "--runs", str(args.runs)]
        command += (["--quick"] if args.quick else []) + extra + args.rest
        started = time.monotonic()
        print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
        print(f"== {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"reports in {OUT}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
