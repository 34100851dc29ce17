"""Send: bonect's sender (``bonect.daemon.sender.send_files``) against DCMTK ``storescu``.

Both send the same files, on one association, to a fresh Orthanc (TCP_NODELAY=1) per run; the
time is the call (``send_files`` in this process, with pynetdicom already imported) or the
``storescu`` process (TCP_NODELAY=1), and Orthanc's instance count is checked afterwards. The
senders take turns within each run, in an order that alternates from run to run.
Target: bonect ≥ 0.8x DCMTK ``storescu``. ``--what-if two-associations`` adds bonect's sender
on two associations at once (every other file each, one thread per association).

    python bench/send.py [--quick] [--runs 3] [--what-if two-associations]
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import (
    Orthanc,
    Samples,
    command_line,
    folder_bytes,
    header,
    publish,
    scratch,
    stopwatch,
    storescu,
    table,
    verdict,
)
from ingest import QUICK_SERIES, SERIES
from series import series_files

SENDERS = ("bonect", "dcmtk")
NAMES = {
    "bonect": "bonect send_files",
    "dcmtk": "DCMTK storescu",
    "what-if-2": "bonect send_files, 2 associations",
}


def send_once(sender: str, files: list[Path], work: Path) -> float:
    from bonect.daemon.sender import DestinationNode, send_files

    with Orthanc(work, allowed_aets=("BONECT",)) as pacs:
        if sender != "dcmtk":
            node = DestinationNode("PACS", "127.0.0.1", pacs.dicom_port)
            parts = [files] if sender != "what-if-2" else [files[0::2], files[1::2]]
            with stopwatch() as elapsed, ThreadPoolExecutor(len(parts)) as pool:
                reports = list(
                    pool.map(lambda part: send_files(part, node, calling_ae="BONECT"), parts)
                )
            ok = all(r.all_stored for r in reports)
            detail = f"{sum(len(r.stored) for r in reports)} stored"
        else:
            with stopwatch() as elapsed:
                done = storescu(pacs.dicom_port, files, called_ae="PACS")
            ok, detail = done.returncode == 0, done.stderr[-3000:]
        stored = pacs.count()
    if not ok or stored != len(files):
        raise RuntimeError(f"{sender}: {stored} of {len(files)} at Orthanc; {detail}")
    return elapsed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny series, smoke test only")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--what-if", default="", choices=("", "two-associations"))
    args = parser.parse_args(argv)
    senders = SENDERS + (("what-if-2",) if args.what_if else ())
    import bonect.daemon.sender  # noqa: F401  (imported before timing)

    specs = QUICK_SERIES if args.quick else SERIES
    files = {s.name: series_files(s) for s in specs}
    samples = {(s.name, x): Samples() for s in specs for x in senders}
    with scratch("send-") as tmp:
        for run in range(args.runs):
            for spec in specs:
                for sender in senders if run % 2 == 0 else senders[::-1]:
                    print(
                        f"run {run + 1}/{args.runs}: {spec.label} from {sender}",
                        file=sys.stderr,
                        flush=True,
                    )
                    work = Path(tmp) / f"{run}-{spec.name}-{sender}"
                    samples[(spec.name, sender)].add(send_once(sender, files[spec.name], work))
    rows = []
    for spec in specs:
        n, size = len(files[spec.name]), folder_bytes(files[spec.name])
        base = samples[(spec.name, "dcmtk")].median
        for sender in senders:
            s = samples[(spec.name, sender)]
            ratio = f"{base / s.median:.2f}"
            if sender != "dcmtk":
                ratio += " " + verdict(base / s.median, 0.8)
            rows.append(
                [
                    spec.label,
                    NAMES[sender],
                    f"{s.median:.2f}",
                    n / s.median,
                    size / s.median / 1e6,
                    ratio,
                    s.spread(),
                ]
            )
    text = "\n".join(
        [
            header("Send" + (" (quick: smoke test only)" if args.quick else ""), command_line()),
            "",
            f"To Orthanc (TCP_NODELAY=1), one association per series. Median of {args.runs} "
            "runs; ratio = instances/s over DCMTK storescu's.",
            "",
            table(
                ["series", "sender", "s", "instances/s", "MB/s", "ratio to storescu", "min-max s"],
                rows,
            ),
        ]
    )
    publish("send" + ("-quick" if args.quick else "") + ("-what-if" if args.what_if else ""), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
