"""Where a C-STORE's time goes in the daemon: the node in this process, its steps timed.

Opens :class:`bonect.daemon.node.Node` from a generated config (as ``bonect-daemon start``
does, without conversion), runs its loop in a thread, has DCMTK ``storescu`` send a series,
and reports per instance the wall time of the C-STORE handler's steps (wrapped module
attributes; the wrappers cost microseconds) against the seconds per instance seen by
``storescu``. ``--no-fsync`` runs it with ``[storage] fsync = false``.

    python bench/profile_ingest.py [--quick] [--series mr|ct] [--no-fsync]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import daemon_config, free_port, scratch, stopwatch, storescu, table
from ingest import QUICK_SERIES, SERIES
from series import series_files


def _timed(totals: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals.setdefault(name, []).append(time.perf_counter() - started)

    return wrapper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--series", choices=("mr", "ct"), default="mr")
    parser.add_argument("--no-fsync", action="store_true", help="[storage] fsync = false")
    args = parser.parse_args(argv)
    import bonect.catalog.queue as queue
    import bonect.daemon.archive as archive
    import bonect.daemon.node as node
    import bonect.daemon.receive as receive
    import bonect.daemon.scp as scp
    from bonect.config import load_config

    totals: dict[str, list[float]] = {}
    scp._Handlers.on_store = _timed(totals, "handler (on_store)", scp._Handlers.on_store)
    archive.Archive.write = _timed(totals, "  archive.write", archive.Archive.write)
    archive.Archive.adopt = _timed(  # a C-STORE's data set, streamed to a file
        totals, "  archive.adopt", archive.Archive.adopt
    )
    archive.fsync_dir = _timed(totals, "    fsync of the folder", archive.fsync_dir)
    queue.Catalog.record_instance = _timed(
        totals, "  sink: catalog.record_instance", queue.Catalog.record_instance
    )
    receive.read_header = _timed(totals, "  read_header (header check)", receive.read_header)
    spec = (QUICK_SERIES if args.quick else SERIES)[0 if args.series == "mr" else 1]
    files = series_files(spec)
    with scratch("profile-ingest-") as tmp:
        port = free_port()
        sections: dict[str, dict[str, object]] = {"rules": {"convert": []}}
        if args.no_fsync:
            sections["storage"] = {"fsync": False}
        path = daemon_config(Path(tmp), port=port, pacs_port=free_port(), sections=sections)
        the_node = node.Node.open(load_config(path))
        stop = threading.Event()
        loop = threading.Thread(target=the_node.run, args=(stop,), daemon=True)
        loop.start()
        try:
            with stopwatch() as elapsed:
                done = storescu(port, files, called_ae="BONECT")
        finally:
            stop.set()
            loop.join(timeout=30)
            the_node.close()
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    n = len(files)
    per = elapsed() / n
    rows = [["storescu, per instance (all of it)", f"{per * 1000:.1f}", "100%"]]
    for name, values in totals.items():
        mean = sum(values) / n
        rows.append([name, f"{mean * 1000:.1f}", f"{100 * mean / per:.0f}%"])
    print(
        f"{spec.label}: {n / elapsed():.1f} instances/s"
        + (" (storage.fsync = false)" if args.no_fsync else "")
    )
    print(table(["step", "ms per instance", "share"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
