"""The ``bonect-daemon`` command: run the node, and the operator's commands around it.

``start`` runs the node in the foreground; ``status``, ``jobs``, ``retry``, ``echo`` and
``check-config`` are what an operator runs beside it (they read and change the catalog, never
the running process). Each command is a thin adapter over a function tests call directly.

Exit codes: 0 success; 1 an error, or a destination that did not answer ``echo``; 70 an
unexpected failure; 78 (EX_CONFIG) a bad configuration, on which systemd does not restart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from bonect import __version__
from bonect.catalog.jobs import IllegalTransition, JobState
from bonect.config import MODEL_KEYWORDS, Config, find_config, load_config
from bonect.errors import BonectError, ConfigError

if TYPE_CHECKING:
    from bonect.catalog.queue import Catalog

logger = logging.getLogger("bonect.daemon")
EXIT_CONFIG = 78


# -- configuration ---------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[Path, Config]:
    path = find_config(args.config)
    if path is None:
        raise ConfigError(
            "no config file: pass --config, set $BONECT_CONFIG, or create ./config.toml "
            "or /etc/bonect/config.toml"
        )
    return path, load_config(path)


def _writable_dir(path: Path) -> str | None:
    """Why ``path`` cannot be used as a writable folder by this user, or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable by this user (uid {os.geteuid()})"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} does not exist and cannot be created here ({parent} is not writable)"
    return None


def config_problems(config: Config) -> list[str]:
    """What a valid config still gets wrong on this machine, each as ``section.key: message``.

    Checked: the storage folder can be written, the TLS files and a configured model folder
    exist, the catalog URL parses, and CUDA is there when asked for.
    """
    problems = []
    if (why := _writable_dir(config.storage.dir)) is not None:
        problems.append(f"storage.dir: {why}")
    security = config.security
    for key in ("tls_certificate", "tls_key", "tls_ca"):
        value: Path | None = getattr(security, key)
        if value is not None and not os.access(value, os.R_OK):
            problems.append(f"security.{key}: {value} does not exist or is not readable")
    if config.catalog.url:
        from sqlalchemy.exc import ArgumentError

        from bonect.catalog.engine import engine_url

        try:
            engine_url(config.catalog.url).get_dialect().import_dbapi()
        except ArgumentError as exc:
            problems.append(f"catalog.url: {exc}")
        except ImportError as exc:
            problems.append(
                f"catalog.url: no database driver ({exc.name or exc}); for PostgreSQL "
                "install psycopg: pip install 'bonect[postgres]'"
            )
    if config.converter.model not in MODEL_KEYWORDS:
        from bonect.converter.model_folder import read_manifest

        try:
            read_manifest(Path(config.converter.model))
        except BonectError as exc:
            problems.append(f"converter.model: {exc}")
    if config.converter.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append("converter.device: cuda, but no CUDA device is available")
    return problems


def _checked(args: argparse.Namespace) -> tuple[Path, Config]:
    """The config, loaded and checked: a :class:`ConfigError` lists every problem."""
    path, config = _load(args)
    problems = config_problems(config)
    if problems:
        raise ConfigError(f"{path}:\n  " + "\n  ".join(problems))
    return path, config


def _open_catalog(config: Config) -> Catalog:
    """The catalog of ``config``, for an operator's command (never creates a SQLite file)."""
    from bonect.catalog.engine import catalog_url
    from bonect.catalog.queue import Catalog

    if not config.catalog.url:
        database = config.storage.dir / "catalog.sqlite3"
        if not database.is_file():
            raise BonectError(f"no catalog at {database}: the daemon has not run yet")
        owner = config.storage.dir.stat().st_uid
        if os.geteuid() == 0 and owner != 0:
            raise BonectError(
                f"run this as the owner of {config.storage.dir} (e.g. sudo -u bonect ...): "
                "as root it could leave catalog files the daemon cannot write"
            )
    return Catalog.open(catalog_url(config.storage.dir, config.catalog.url))


# -- status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobTimeline:
    """When things happened to one job and its series, for per-stage timings."""

    job_id: int
    series_uid: str
    attempts: int
    model_version: str | None
    first_received_at: datetime
    last_received_at: datetime
    released_at: datetime | None
    created_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float] = field(default_factory=dict)
    generation: int = 1

    def stages(self) -> list[tuple[str, float]]:
        """Seconds per stage, in order: receive, settle wait, queue wait, the worker's stages
        (read, convert, write, send) and the total from the series' completion to done.

        The settle wait counts from the association's release when there was one, else from
        the last instance received (the quiet timer's start).
        """
        start = self.last_received_at
        if self.released_at is not None and self.released_at >= self.last_received_at:
            start = self.released_at
        stages = [("receive", _seconds(self.first_received_at, self.last_received_at))]
        stages.append(("settle wait", _seconds(start, self.created_at)))
        if self.claimed_at is not None:
            stages.append(("queue wait", _seconds(self.created_at, self.claimed_at)))
        stages.extend(self.timings.items())
        if self.finished_at is not None:
            label = "release to done" if start == self.released_at else "last instance to done"
            stages.append((label, _seconds(start, self.finished_at)))
        return stages


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def last_done_timeline(catalog: Catalog) -> JobTimeline | None:
    """The timeline of the job that finished last, or None when no job is done."""
    from sqlalchemy import select

    from bonect.catalog.models import Job, Series

    query = (
        select(Job, Series)
        .join(Series, Job.series_id == Series.id)
        .where(Job.state == JobState.DONE)
        .order_by(Job.finished_at.desc(), Job.id.desc())
        .limit(1)
    )
    with catalog.reading() as session:
        row = session.execute(query).first()
        if row is None:
            return None
        job, series = row.tuple()
        return JobTimeline(
            job_id=job.id,
            series_uid=series.series_uid,
            attempts=job.attempts,
            model_version=job.model_version,
            generation=job.generation,
            first_received_at=series.first_received_at,
            last_received_at=series.last_received_at,
            released_at=series.association_released_at,
            created_at=job.created_at,
            claimed_at=job.claimed_at,
            finished_at=job.finished_at,
            timings=_timings(job.timings),
        )


def _timings(text: str | None) -> dict[str, float]:
    return {str(k): float(v) for k, v in json.loads(text).items()} if text else {}


def model_summary(config: Config) -> str:
    """The configured method, and with ``auto`` what the registry's pointer names.

    The pointer and the manifest are read as plain files, without importing PyTorch (which
    would take seconds): ``promoted`` names a folder holding ``manifest.json``.
    """
    spec = config.converter.model
    if spec != "auto":
        return spec
    registry = config.model_registry
    try:
        name = (registry / "promoted").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        name = ""
    if not name:
        return "auto: classical (no model promoted)"
    try:
        manifest = json.loads((registry / name / "manifest.json").read_text(encoding="utf-8"))
        label = f"{manifest['name']} {manifest['version']}"
        clinical = manifest.get("clinical_use") is True
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return (
            f"auto: promoted {name!r} is not a model folder ({type(exc).__name__}: {exc}); "
            "the daemon keeps the model it had"
        )
    return f"auto: {label} (folder {name}{'' if clinical else ', NOT FOR CLINICAL USE'})"


def _local(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def status_lines(config: Config, catalog: Catalog, now: datetime) -> list[str]:
    """What ``bonect-daemon status`` prints: queue, model, timings of the last job, errors."""
    from bonect.catalog.models import SendStatus, SettleState

    counts = catalog.counts_by_state()
    lines = ["jobs: " + ", ".join(f"{state.value} {n}" for state, n in counts.items())]
    receiving = len(catalog.list_series(settle_state=SettleState.OPEN))
    oldest = catalog.oldest_waiting_since()
    waiting = "" if oldest is None else f", oldest waiting job {_seconds(oldest, now):.0f} s"
    lines.append(f"series being received: {receiving}{waiting}")
    lines.append(f"model: {model_summary(config)}")
    last = last_done_timeline(catalog)
    if last is not None:
        used = f", {last.model_version}" if last.model_version else ""
        retried = f", {last.attempts} attempts" if last.attempts > 1 else ""
        lines.append(
            f"last done: job {last.job_id} (series {last.series_uid}{used}{retried}), "
            f"generation {last.generation}"
        )
        lines.append("  " + ", ".join(f"{name} {s:.1f} s" for name, s in last.stages()))
    errors = []
    for job in catalog.jobs(JobState.FAILED, limit=5):
        errors.append(f"  job {job.id} failed {_local(job.updated_at)}: {job.last_error}")
    for job in catalog.jobs(JobState.RETRY_WAIT, limit=5):
        sends = {
            f"{s.destination}: {s.last_error or f'status 0x{s.last_status_code:04X}'}"
            for s in catalog.sends(job)
            if s.status == SendStatus.PENDING and (s.last_error or s.last_status_code)
        }
        detail = f" ({'; '.join(sorted(sends))})" if sends else ""
        errors.append(
            f"  job {job.id} retries at {_local(job.not_before)} (attempt {job.attempts}): "
            f"{job.last_error}{detail}"
        )
    lines.append("last errors:" if errors else "last errors: none")
    lines.extend(errors)
    return lines


def newest_done_generations(catalog: Catalog, series_uids: set[str]) -> dict[str, int]:
    """The newest generation done of each of these series (those with one done)."""
    from sqlalchemy import func, select

    from bonect.catalog.models import Job, Series

    query = (
        select(Series.series_uid, func.max(Job.generation))
        .join(Job, Job.series_id == Series.id)
        .where(Job.state == JobState.DONE, Series.series_uid.in_(series_uids))
        .group_by(Series.series_uid)
    )
    with catalog.reading() as session:
        return {str(uid): int(generation) for uid, generation in session.execute(query)}


def job_lines(catalog: Catalog, state: str | None, limit: int) -> list[str]:
    """One line per job, newest first: id, state, last change, generation, attempts, series,
    reason; a done job whose series was converted again since says which generation replaced
    it."""
    jobs = catalog.jobs(JobState(state) if state else None, limit=limit)
    newest = newest_done_generations(catalog, {job.series_uid for job in jobs})
    lines = []
    for job in jobs:
        reason = f"  {job.last_error}" if job.last_error else ""
        if job.state == JobState.DONE and newest.get(job.series_uid, 0) > job.generation:
            reason = f"  replaced by generation {newest[job.series_uid]}{reason}"
        lines.append(
            f"{job.id:6d}  {job.state.value:10s}  {_local(job.updated_at)}  "
            f"gen {job.generation}  attempts {job.attempts}  {job.series_uid}{reason}"
        )
    return lines


# -- commands --------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    path, config = _checked(args)  # first: a bad config exits 78 before the heavy imports
    from bonect.converter.inference import set_threads
    from bonect.daemon.node import Node

    set_threads(config.converter.threads)
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
    path, config = _checked(args)
    destinations = ", ".join(
        f"{d.name} {d.ae_title}@{d.host}:{d.port}"
        + ("" if d.receives == "all" else " (returns only)")
        + ("" if d.rejection_notes else " (no rejection notes)")
        for d in config.destinations
    )
    metrics = config.metrics
    print(f"{path}: OK")
    print(f"  node {config.node.ae_title} on {config.node.host}:{config.node.port}")
    print(f"  storage {config.storage.dir}, catalog {config.catalog.url or 'SQLite in storage'}")
    print(f"  model {config.converter.model} on {config.converter.device}")
    print(f"  destinations: {destinations or 'none (the sCT is only archived)'}")
    if config.sender.return_to_sender:
        print("  the sCT also returns to the destination whose AE title sent the MR")
    if metrics.enabled:
        print(f"  metrics on http://{metrics.host}:{metrics.port}/metrics")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    path, config = _load(args)
    catalog = _open_catalog(config)
    try:
        print(f"bonect {__version__}, {path}, storage {config.storage.dir}")
        for line in status_lines(config, catalog, datetime.now(UTC)):
            print(line)
    finally:
        catalog.close()
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    _, config = _load(args)
    catalog = _open_catalog(config)
    try:
        lines = job_lines(catalog, args.state, args.limit)
    finally:
        catalog.close()
    print("\n".join(lines) if lines else "no jobs")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    _, config = _load(args)
    catalog = _open_catalog(config)
    now = datetime.now(UTC)
    try:
        if args.failed:
            ids = catalog.retry_failed(now=now)
            print(f"queued again: {', '.join(map(str, ids))}" if ids else "no failed jobs")
        else:
            try:
                job = catalog.retry(args.job, now=now)
            except IllegalTransition as exc:
                raise BonectError(
                    f"job {args.job} is {exc.current.value}: only a failed job can be retried"
                ) from exc
            print(f"job {job.id} queued again")
    finally:
        catalog.close()
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from bonect.daemon.sender import DestinationNode, echo

    _, config = _load(args)
    by_name = {d.name: d for d in config.destinations}
    if args.destination is not None and args.destination not in by_name:
        known = ", ".join(by_name) or "none configured"
        raise BonectError(f"no destination {args.destination!r} (known: {known})")
    chosen = [by_name[args.destination]] if args.destination else list(by_name.values())
    if not chosen:
        raise BonectError("no destinations configured")
    failed = 0
    for d in chosen:
        ok = echo(DestinationNode.from_config(d), config.node.ae_title)
        failed += not ok
        print(f"C-ECHO {d.name} ({d.ae_title}@{d.host}:{d.port}): {'success' if ok else 'FAILED'}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    # --config and -v are accepted before or after the command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config.toml to use")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="bonect-daemon", description="The bonect DICOM node: bone MR in, synthetic CT out."
    )
    parser.add_argument("--version", action="version", version=f"bonect {__version__}")
    parser.add_argument("--config", type=Path, default=None, help="config.toml to use")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    command("start", "run the node in the foreground (under systemd)").set_defaults(
        handler=cmd_start
    )
    command("status", "queue by state, model in use, timings of the last job, errors").set_defaults(
        handler=cmd_status
    )
    jobs = command("jobs", "list jobs, newest first")
    jobs.add_argument("--state", choices=[s.value for s in JobState])
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(handler=cmd_jobs)
    retry = command("retry", "queue a failed job again (or every failed job with --failed)")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("job", type=int, nargs="?", help="job id")
    target.add_argument("--failed", action="store_true", help="every failed job")
    retry.set_defaults(handler=cmd_retry)
    echo_p = command("echo", "C-ECHO a configured destination (every one when none is named)")
    echo_p.add_argument("destination", nargs="?", help="the destination's name in the config")
    echo_p.set_defaults(handler=cmd_echo)
    command(
        "check-config", "validate the config; every problem as section.key: message, exit 78"
    ).set_defaults(handler=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from bonect.cli import run
    from bonect.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run(args.handler, args, prog="bonect-daemon")


if __name__ == "__main__":
    sys.exit(main())
