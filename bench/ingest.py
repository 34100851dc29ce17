"""Ingest: DCMTK ``storescu`` (TCP_NODELAY=1) C-STOREs a series into each receiver in turn.

Receivers, each started fresh with empty storage for every run and stopped after it:

* ``bonect-daemon start`` from a generated config (archive fsync'd + catalog row per instance;
  ``[rules] convert = []`` so that no conversion starts while the next run is measured);
* the same daemon with ``[storage] fsync = false`` (no fsync of file and folder per instance):
  what durability costs, and what a site that turns it off gets;
* DCMTK ``storescp -od`` (TCP_NODELAY=1);
* pynetdicom's ``storescp`` app (``python -m pynetdicom storescp -od``), as shipped;
* Orthanc (TCP_NODELAY=1), as tests/dicom_peers.py starts it.

Time = ``storescu`` wall time (association, every C-STORE answered, release), checked by
counting what the receiver holds afterwards. Receivers take turns within each run, in an
order that rotates from run to run. Target: bonect ≥ 1.0x pynetdicom's ``storescp``.

    python bench/ingest.py [--quick] [--runs 3]
        [--receivers bonect,bonect-no-fsync,dcmtk,pynetdicom,orthanc]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from common import (
    Orthanc,
    Process,
    Samples,
    command_line,
    daemon_config,
    dcmtk,
    folder_bytes,
    free_port,
    header,
    peer_env,
    publish,
    scratch,
    start_daemon,
    stopwatch,
    storescu,
    table,
    verdict,
)
from series import SeriesSpec, series_files

SERIES = [
    SeriesSpec("ingest-mr-300x256", "MR", 300, 256),
    SeriesSpec("ingest-ct-400x512", "CT", 400, 512),
]
QUICK_SERIES = [
    SeriesSpec("q-ingest-mr-30x64", "MR", 30, 64),
    SeriesSpec("q-ingest-ct-40x128", "CT", 40, 128),
]
RECEIVERS = ("bonect", "bonect-no-fsync", "dcmtk", "pynetdicom", "orthanc")
NAMES = {
    "bonect": "bonect-daemon",
    "bonect-no-fsync": "bonect-daemon, storage.fsync = false",
    "dcmtk": "DCMTK storescp",
    "pynetdicom": "pynetdicom storescp app",
    "orthanc": "Orthanc",
}


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def receive_once(receiver: str, files: list[Path], work: Path) -> float:
    """Start ``receiver`` in ``work``, send ``files`` to it, stop it; the storescu seconds."""
    work.mkdir(parents=True)
    if receiver == "orthanc":
        with Orthanc(work / "orthanc", allowed_aets=("BONECT",)) as pacs:
            with stopwatch() as elapsed:
                done = storescu(pacs.dicom_port, files, called_ae="PACS")
            check(done.returncode == 0 and pacs.count() == len(files), receiver, done.stderr)
            return elapsed()
    port = free_port()
    out = work / "received"
    if receiver in ("bonect", "bonect-no-fsync"):
        sections: dict[str, dict[str, object]] = {"rules": {"convert": []}}
        if receiver == "bonect-no-fsync":
            sections["storage"] = {"fsync": False}
        config = daemon_config(work, port=port, pacs_port=free_port(), sections=sections)
        process = start_daemon(config, port)
    elif receiver == "dcmtk":
        out.mkdir()
        process = Process(
            [dcmtk("storescp"), "-aet", "BONECT", "-od", str(out), str(port)],
            work / "storescp.log",
            env=peer_env(),
        )
        process.wait_port(port, "DCMTK storescp")
    elif receiver == "pynetdicom":
        process = Process(
            [
                sys.executable,
                "-m",
                "pynetdicom",
                "storescp",
                "-aet",
                "BONECT",
                "-od",
                str(out),
                str(port),
            ],
            work / "storescp.log",
        )
        process.wait_port(port, "pynetdicom storescp")
    else:
        raise ValueError(receiver)
    try:
        with stopwatch() as elapsed:
            done = storescu(port, files, called_ae="BONECT")
        if receiver.startswith("bonect"):
            db = sqlite3.connect(f"file:{work / 'var' / 'catalog.sqlite3'}?mode=ro", uri=True)
            stored = int(db.execute("SELECT count(*) FROM instances").fetchone()[0])
            db.close()
        else:
            stored = count_files(out)
        check(
            done.returncode == 0 and stored == len(files),
            receiver,
            f"{stored} of {len(files)} stored\n{done.stderr}",
        )
        return elapsed()
    finally:
        process.stop()


def check(ok: bool, receiver: str, detail: str) -> None:
    if not ok:
        raise RuntimeError(f"{receiver} did not store everything: {detail[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny series, smoke test only")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    args = parser.parse_args(argv)
    receivers = [r for r in args.receivers.split(",") if r]
    specs = QUICK_SERIES if args.quick else SERIES
    files = {s.name: series_files(s) for s in specs}
    samples = {(s.name, r): Samples() for s in specs for r in receivers}
    with scratch("ingest-") as tmp:
        for run in range(args.runs):
            for spec in specs:
                order = receivers[run % len(receivers) :] + receivers[: run % len(receivers)]
                for receiver in order:
                    print(
                        f"run {run + 1}/{args.runs}: {spec.label} -> {receiver}",
                        file=sys.stderr,
                        flush=True,
                    )
                    work = Path(tmp) / f"{run}-{spec.name}-{receiver}"
                    samples[(spec.name, receiver)].add(
                        receive_once(receiver, files[spec.name], work)
                    )
    rows = []
    for spec in specs:
        n, size = len(files[spec.name]), folder_bytes(files[spec.name])
        base = samples.get((spec.name, "pynetdicom"))
        for receiver in receivers:
            s = samples[(spec.name, receiver)]
            ratio: object = "-"
            if base is not None and base.values:
                value = base.median / s.median
                ratio = f"{value:.2f}"
                if receiver == "bonect":
                    ratio += " " + verdict(value, 1.0)
            rows.append(
                [
                    spec.label,
                    NAMES[receiver],
                    f"{s.median:.2f}",
                    n / s.median,
                    size / s.median / 1e6,
                    ratio,
                    s.spread(),
                ]
            )
    sizes = ", ".join(
        f"{s.label}: {len(files[s.name])} files, {folder_bytes(files[s.name]) / 1e6:.0f} MB"
        for s in specs
    )
    text = "\n".join(
        [
            header("Ingest" + (" (quick: smoke test only)" if args.quick else ""), command_line()),
            "",
            f"DCMTK storescu (TCP_NODELAY=1), one association per series; {sizes}. "
            f"Median of {args.runs} runs; ratio = instances/s over the pynetdicom storescp app's.",
            "",
            table(
                [
                    "series",
                    "receiver",
                    "s",
                    "instances/s",
                    "MB/s",
                    "ratio to pynetdicom storescp",
                    "min-max s",
                ],
                rows,
            ),
        ]
    )
    publish("ingest" + ("-quick" if args.quick else ""), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
