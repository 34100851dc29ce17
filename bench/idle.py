"""The idle daemon's CPU: `bonect-daemon start` doing nothing, measured from /proc.

Issue 15's target: an idle daemon uses under 1 % of one core over 10 minutes. The daemon runs
as a deployment would (its threads all up: the listener, settling, the worker polling the
catalog, the drop folder, the model watcher on the registry, the Prometheus endpoint, the
destination's C-ECHO watch against Orthanc) and receives nothing. Its CPU time (user + system,
all threads, from ``/proc/<pid>/stat``) is read after a settling minute and then every minute;
the share of one core is CPU seconds over wall seconds. Other processes' load does not enter
it, save through the scheduler.

    python bench/idle.py [--minutes 10] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from common import (
    Orthanc,
    command_line,
    daemon_config,
    free_port,
    header,
    publish,
    scratch,
    start_daemon,
    table,
    verdict,
)

TICKS = os.sysconf("SC_CLK_TCK")
TARGET_PERCENT = 1.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="measured time (10)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before (60)")
    parser.add_argument("--quick", action="store_true", help="20 s after 5 s: smoke test only")
    args = parser.parse_args(argv)
    minutes, warmup = (1 / 3, 5.0) if args.quick else (args.minutes, args.warmup)
    rows: list[list[object]] = []
    with (
        scratch("idle-") as tmp,
        Orthanc(Path(tmp) / "orthanc", allowed_aets=("BONECT",)) as pacs,
    ):
        work = Path(tmp)
        port = free_port()
        config = daemon_config(
            work,
            port=port,
            pacs_port=pacs.dicom_port,
            sections={
                "converter": {"model": "auto"},  # the registry watched; nothing promoted
                "metrics": {"enabled": True, "port": free_port()},
            },
        )
        daemon = start_daemon(config, port)
        pid = daemon.popen.pid
        try:
            time.sleep(warmup)  # imports and start-up done; then idle only
            start_cpu, start_wall = cpu_seconds(pid), time.monotonic()
            previous_cpu, previous_wall = start_cpu, start_wall
            step = min(60.0, minutes * 60)
            while time.monotonic() - start_wall < minutes * 60 - 0.5:
                time.sleep(step)
                cpu, wall = cpu_seconds(pid), time.monotonic()
                share = 100 * (cpu - previous_cpu) / (wall - previous_wall)
                used = cpu - previous_cpu
                rows.append([f"{wall - start_wall:.0f}", f"{used:.2f}", f"{share:.2f}"])
                print(f"{wall - start_wall:.0f} s: {share:.2f} % of a core", file=sys.stderr)
                previous_cpu, previous_wall = cpu, wall
            total_cpu, total_wall = cpu_seconds(pid) - start_cpu, time.monotonic() - start_wall
            thread_count = threads(pid)
        finally:
            daemon.stop()
    percent = 100 * total_cpu / total_wall
    text = [
        header("Idle daemon" + (" (quick: smoke test only)" if args.quick else ""), command_line()),
        "",
        f"`bonect-daemon start` receiving nothing for {total_wall:.0f} s after {warmup:.0f} s of "
        f"start-up ({thread_count} threads); CPU = user + system of all its threads "
        "(/proc/<pid>/stat), per interval and in all.",
        "",
        table(["s since start", "CPU s in the interval", "% of one core"], rows),
        "",
        f"**In all: {total_cpu:.2f} CPU s in {total_wall:.0f} s = {percent:.2f} % of one core** "
        f"— {verdict(percent, TARGET_PERCENT, at_least=False)}",
    ]
    publish("idle" + ("-quick" if args.quick else ""), "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
