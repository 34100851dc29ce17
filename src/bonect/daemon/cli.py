"""The ``bonect-daemon`` command: run the node, and the operator's commands around it.

Exit codes: 0 success, 1 an error, 78 a bad configuration (systemd does not restart on it).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bonect import __version__
from bonect.config import Config, find_config, load_config
from bonect.errors import BonectError, ConfigError

logger = logging.getLogger("bonect.daemon")
EXIT_CONFIG = 78


def _load(args: argparse.Namespace) -> tuple[Path, Config]:
    path = find_config(args.config)
    if path is None:
        raise ConfigError(
            "no config file: pass --config, set $BONECT_CONFIG, or create ./config.toml "
            "or /etc/bonect/config.toml"
        )
    return path, load_config(path)


def _catalog(config: Config):  # type: ignore[no-untyped-def]
    from bonect.catalog.engine import catalog_url
    from bonect.catalog.queue import Catalog

    return Catalog.open(catalog_url(config.storage.dir, config.catalog.url))


def cmd_start(args: argparse.Namespace) -> int:
    from bonect.daemon.node import Node

    path, config = _load(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        logger.info("signal %d: stopping after the current step", signum)
        stop.set()  # flag only; the loop sees it

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("bonect %s starting from %s", __version__, path)
    node = Node.open(config)
    try:
        if config.metrics.enabled:
            node.metrics.serve(config.metrics.host, config.metrics.port)
        node.run(stop)
    finally:
        node.close()
    logger.info("stopped")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path, config = _load(args)
    print(
        f"{path}: OK ({config.node.ae_title} on {config.node.host}:{config.node.port}, "
        f"{len(config.destinations)} destination(s))"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bonect.catalog.jobs import JobState
    from bonect.converter.model_folder import promoted_model

    _, config = _load(args)
    catalog = _catalog(config)
    try:
        counts = catalog.counts_by_state()
        print("jobs: " + ", ".join(f"{state.value} {n}" for state, n in counts.items()))
        oldest = catalog.oldest_waiting_since()
        if oldest is not None:
            age = (datetime.now(UTC) - oldest).total_seconds()
            print(f"oldest waiting job: {age:.0f} s")
        if config.converter.model == "auto":
            folder = promoted_model(config.model_registry)
            print(f"model: {folder.name if folder else 'classical (none promoted)'}")
        else:
            print(f"model: {config.converter.model}")
        done = catalog.jobs(JobState.DONE, limit=1)
        if done and done[0].timings:
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in done[0].timings.items())
            print(f"last job {done[0].id}: {stages}")
        failed = catalog.jobs(JobState.FAILED, limit=5)
        for job in failed:
            print(f"failed job {job.id} (series {job.series_uid}): {job.last_error}")
    finally:
        catalog.close()
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from bonect.catalog.jobs import JobState

    _, config = _load(args)
    catalog = _catalog(config)
    try:
        state = JobState(args.state) if args.state else None
        for job in catalog.jobs(state, limit=args.limit):
            reason = f"  {job.last_error}" if job.last_error else ""
            print(
                f"{job.id:6d}  {job.state.value:10s}  {job.updated_at:%Y-%m-%d %H:%M:%S}  "
                f"attempts {job.attempts}  {job.series_uid}{reason}"
            )
    finally:
        catalog.close()
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    _, config = _load(args)
    catalog = _catalog(config)
    now = datetime.now(UTC)
    try:
        if args.failed:
            ids = catalog.retry_failed(now=now)
            print(f"queued again: {ids or 'nothing (no failed jobs)'}")
        else:
            job = catalog.retry(args.job, now=now)
            print(f"job {job.id} queued again")
    finally:
        catalog.close()
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from bonect.daemon.sender import DestinationNode, echo

    _, config = _load(args)
    by_name = {d.name: d for d in config.destinations}
    if args.destination not in by_name:
        known = ", ".join(by_name) or "none configured"
        raise BonectError(f"no destination {args.destination!r} (known: {known})")
    d = by_name[args.destination]
    ok = echo(DestinationNode.from_config(d), config.node.ae_title)
    print(f"C-ECHO {d.ae_title}@{d.host}:{d.port}: {'success' if ok else 'FAILED'}")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bonect-daemon", description="The bonect DICOM node: bone MR in, synthetic CT out."
    )
    parser.add_argument("--version", action="version", version=f"bonect {__version__}")
    parser.add_argument("--config", type=Path, default=None, help="config.toml to use")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "start", help="run the node in the foreground (systemd: Type=simple)"
    ).set_defaults(handler=cmd_start)
    sub.add_parser(
        "status", help="queue by state, model in use, timings, last errors"
    ).set_defaults(handler=cmd_status)
    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument(
        "--state",
        choices=[
            s for s in ("queued", "running", "converted", "sending", "retry_wait", "done", "failed")
        ],
    )
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(handler=cmd_jobs)
    retry = sub.add_parser("retry", help="queue a failed job again (or all with --failed)")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("job", type=int, nargs="?", help="job id")
    target.add_argument("--failed", action="store_true", help="every failed job")
    retry.set_defaults(handler=cmd_retry)
    echo_p = sub.add_parser("echo", help="C-ECHO a configured destination")
    echo_p.add_argument("destination", help="the destination's name in the config")
    echo_p.set_defaults(handler=cmd_echo)
    sub.add_parser(
        "check-config", help="validate the config; every problem as section.key: message"
    ).set_defaults(handler=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from bonect.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"bonect-daemon: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BonectError as exc:
        print(f"bonect-daemon: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # boundary
        if args.verbose:
            logger.exception("unexpected failure")
        print(f"bonect-daemon: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
