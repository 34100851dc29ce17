"""Send: bonect's sender (``bonect.daemon.sender.send_files``) against DCMTK ``storescu``.

All send the same files, on one association, to a fresh Orthanc (TCP_NODELAY=1) per run; the
time is the call (``send_files`` in this process, with pynetdicom already imported, on either
transport: pynetdicom, or DCMTK ``dcmsend`` with each instance's status read off its report) or
the ``storescu`` process (TCP_NODELAY=1), and Orthanc's instance count is checked afterwards.
The senders take turns within each run, in an order that alternates from run to run.
Target: bonect ≥ 0.8x DCMTK ``storescu``. ``--what-if two-associations`` adds bonect's sender
on two associations at once (every other file each, one thread per association);
``--what-if large-pdu`` runs every sender against an Orthanc that declares a maximum PDU length
of 128 kB (``MaximumPduLength``; as shipped it declares 16 kB, and the receiver's maximum is what
decides how many PDUs a sender cuts each instance into).

    python bench/send.py [--quick] [--runs 3] [--what-if two-associations|large-pdu]
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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

SENDERS = ("bonect", "bonect-dcmsend", "dcmtk")
NAMES = {
    "bonect": "bonect send_files",
    "bonect-dcmsend": "bonect send_files (dcmsend)",
    "dcmtk": "DCMTK storescu",
    "what-if-2": "bonect send_files, 2 associations",
}


LARGE_PDU = 131072  # the most Orthanc 1.10 accepts


class _LargePduOrthanc(Orthanc):
    def config(self) -> dict[str, Any]:
        return {**super().config(), "MaximumPduLength": LARGE_PDU}


def send_once(sender: str, files: list[Path], work: Path, *, large_pdu: bool = False) -> float:
    from bonect.config import SendTransport
    from bonect.daemon.sender import DestinationNode, SendReport, send_files

    peer = _LargePduOrthanc if large_pdu else Orthanc
    with peer(work, allowed_aets=("BONECT",)) as pacs:
        if sender != "dcmtk":
            node = DestinationNode("PACS", "127.0.0.1", pacs.dicom_port)
            parts = [files] if sender != "what-if-2" else [files[0::2], files[1::2]]
            transport: SendTransport = "dcmsend" if sender == "bonect-dcmsend" else "pynetdicom"

            def send(part: list[Path]) -> SendReport:
                return send_files(part, node, calling_ae="BONECT", transport=transport)

            with stopwatch() as elapsed, ThreadPoolExecutor(len(parts)) as pool:
                reports = list(pool.map(send, parts))
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
    parser.add_argument("--what-if", default="", choices=("", "two-associations", "large-pdu"))
    args = parser.parse_args(argv)
    large_pdu = args.what_if == "large-pdu"
    senders = SENDERS + (("what-if-2",) if args.what_if == "two-associations" else ())
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
                    samples[(spec.name, sender)].add(
                        send_once(sender, files[spec.name], work, large_pdu=large_pdu)
                    )
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
            "To Orthanc (TCP_NODELAY=1"
            + (f", MaximumPduLength {LARGE_PDU}" if large_pdu else "")
            + f"), one association per series. Median of {args.runs} "
            "runs; ratio = instances/s over DCMTK storescu's.",
            "",
            table(
                ["series", "sender", "s", "instances/s", "MB/s", "ratio to storescu", "min-max s"],
                rows,
            ),
        ]
    )
    what_if = {"": "", "two-associations": "-what-if", "large-pdu": "-what-if-large-pdu"}
    publish("send" + ("-quick" if args.quick else "") + what_if[args.what_if], text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
