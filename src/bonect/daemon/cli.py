"""The ``bonect-daemon`` command: run the node, and the operator's commands around it.

``start`` runs the node in the foreground; ``status``, ``jobs``, ``retry``, ``echo`` and
``check-config`` are what an operator runs beside it (they read and change the catalog, never
the running process). Each command is a thin adapter over a function tests call directly;
what ``status`` and ``jobs`` print is composed in :mod:`bonect.daemon.status_report`.

Exit codes: 0 success; 1 an error, or a destination that did not answer ``echo``; 70 an
unexpected failure; 78 (EX_CONFIG) a bad configuration, on which systemd does not restart
(``start --role receiver|worker`` on a SQLite catalog is one).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from bonect import __version__
from bonect.catalog.jobs import IllegalTransition, JobState
from bonect.catalog.priors import PriorState
from bonect.cli_boundary import positive_int
from bonect.config import MODEL_KEYWORDS, Config, find_config, load_config
from bonect.errors import BonectError, ConfigError

if TYPE_CHECKING:
    from bonect.catalog.queue import Catalog

logger = logging.getLogger("bonect.daemon")


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
    if security.tls_certificate is not None and security.tls_key is not None and not problems:
        import ssl

        from bonect.daemon.scp import server_tls_context

        try:
            server_tls_context(security.tls_certificate, security.tls_key, security.tls_ca)
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"security.tls_certificate: cannot load it with its key and CA ({exc})")
    for key in ("password_file", "tls_certificate", "tls_key"):  # [web], when it is on
        value = getattr(config.web, key)
        if config.web.enabled and value is not None and not os.access(value, os.R_OK):
            problems.append(f"web.{key}: {value} does not exist or is not readable")
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
        from bonect.registry import read_manifest

        try:
            read_manifest(Path(config.converter.model))
        except BonectError as exc:
            problems.append(f"converter.model: {exc}")
    if config.converter.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append("converter.device: cuda, but no CUDA device is available")
    if config.sender.transport == "dcmsend" and shutil.which("dcmsend") is None:
        problems.append(
            'sender.transport: "dcmsend", but DCMTK\'s dcmsend is not on PATH '
            '(apt-get install dcmtk, or transport = "pynetdicom")'
        )
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


def model_summary(config: Config) -> str:
    """The configured method, and with ``auto`` what the registry's pointer names.

    Read through :mod:`bonect.registry`, which does not import PyTorch (that would take seconds).
    """
    from bonect.registry import promoted_name, read_manifest

    spec = config.converter.model
    if spec != "auto":
        return spec
    registry = config.model_registry
    name = promoted_name(registry)
    if name is None:
        return "auto: classical (no model promoted)"
    try:
        manifest = read_manifest(registry / name)
    except BonectError as exc:
        return (
            f"auto: promoted {name!r} is not a model folder ({exc}); "
            "the daemon keeps the model it had"
        )
    clinical = "" if manifest.clinical_use else ", NOT FOR CLINICAL USE"
    return f"auto: {manifest.label} (folder {name}{clinical})"


# -- commands --------------------------------------------------------------------------------


ROLES = ("all", "receiver", "worker")
ROLES_HELP = (
    "what this host runs: all (default: one host does everything); receiver (the DICOM port, "
    "drop folder, priors, settling and queueing; converts nothing); worker (converts and "
    "sends; opens no DICOM port). receiver and worker share a PostgreSQL [catalog] url and "
    "the storage dir (a shared file system) with the other hosts"
)


def role_problem(role: str, config: Config) -> str | None:
    """Why ``config`` cannot run ``--role role``, as ``section.key: message``; None if it can."""
    if role != "all" and not config.catalog.url.strip():
        return (
            f"catalog.url: --role {role} needs a catalog the other hosts share (postgresql://…); "
            "SQLite in storage.dir is for one host (--role all)"
        )
    return None


def cmd_start(args: argparse.Namespace) -> int:
    path, config = _checked(args)  # first: a bad config exits 78 before the heavy imports
    if (problem := role_problem(args.role, config)) is not None:
        raise ConfigError(f"{path}: {problem}")
    from bonect.converter.inference import set_threads
    from bonect.daemon.echo_watch import start_echo_thread
    from bonect.daemon.incoming import RECEIVING, receive_into
    from bonect.daemon.node import Node
    from bonect.daemon.priors import start_priors_thread
    from bonect.daemon.roles import NodeRole
    from bonect.dicom.network import monotonic_association_timers

    set_threads(config.converter.threads)
    monotonic_association_timers()  # a step of the wall clock must not abort associations
    # patient data: nothing we write is for other users, whatever the shell's umask (the unit
    # sets UMask=0077 as well); a stricter umask is kept
    os.umask(os.umask(0o077) | 0o077)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        logger.info("signal %d: stopping after the current step", signum)
        stop.set()  # flag only; the loop sees it

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("bonect %s starting from %s as %s", __version__, path, args.role)
    role = NodeRole(args.role)
    if role.receives:  # data sets stream to the storage disk, not to a /tmp that may be memory
        receive_into(config.storage.dir / RECEIVING)
    node = Node.open(config, role=role)
    web = None
    try:
        if config.metrics.enabled:
            node.metrics.serve(config.metrics.host, config.metrics.port)
        if config.web.enabled:  # the status page, on a thread (bonect.web)
            from bonect.web.server import WebServer

            web = WebServer.start(config, node.catalog, model_label=lambda: node.model_label)
        priors = None
        if node.role.receives:  # their C-MOVE answers come to this host's DICOM port
            priors = start_priors_thread(node, stop)  # [[sources]]: on its own thread
        start_echo_thread(node, stop)  # a C-ECHO of every peer now and then, for the page
        node.run(stop)
        if priors is not None:
            priors.join(timeout=30)
    finally:
        if web is not None:
            web.stop()
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
    node, security = config.node, config.security
    print(f"  node {node.ae_title} on {node.host}:{node.port}, {_transport(config)}")
    print(f"  peers: {_peers(config)}; calling AE titles: "
          f"{', '.join(security.allowed_ae_titles) or 'any'}")  # fmt: skip
    print(
        f"  limits: {node.max_associations} associations, {node.max_pending_connections} "
        f"connections waiting, request timeout {node.request_timeout_seconds:g} s, idle "
        f"timeout {node.idle_timeout_seconds:g} s"
    )
    print(f"  storage {config.storage.dir}, catalog {config.catalog.url or 'SQLite in storage'}")
    if config.catalog.url.strip():
        print(
            f"  start --role all|receiver|worker on each host; a dead worker's job is taken "
            f"over after its {config.catalog.lease_seconds:g} s lease"
        )
    else:
        print("  start --role all only (receiver and worker hosts need a PostgreSQL catalog)")
    print(f"  model {config.converter.model} on {config.converter.device}")
    print(f"  destinations: {destinations or 'none (the sCT is only archived)'}")
    if config.sender.return_to_sender:
        print("  the sCT also returns to the destination whose AE title sent the MR")
    if metrics.enabled:
        print(f"  metrics on http://{metrics.host}:{metrics.port}/metrics")
    if config.web.enabled:
        login = "no login" if config.web.password_file is None else "login required"
        print(f"  status page on {config.web.host}:{config.web.port} ({login})")
    return 0


def _transport(config: Config) -> str:
    security = config.security
    if security.tls_certificate is None:
        return "plain DICOM (no TLS)"
    if security.tls_ca is None:
        return "DICOM TLS only (TLS 1.2+), no client certificate asked"
    return f"DICOM TLS only (TLS 1.2+), client certificates signed by {security.tls_ca}"


def _peers(config: Config) -> str:
    security = config.security
    if security.allow_any_peer:
        return "any address (allow_any_peer)"
    return ", ".join(security.allowed_networks) or "loopback only"


def cmd_status(args: argparse.Namespace) -> int:
    from bonect.daemon.status_report import status_lines

    path, config = _load(args)
    catalog = _open_catalog(config)
    try:
        print(f"bonect {__version__}, {path}, storage {config.storage.dir}")
        for line in status_lines(catalog, datetime.now(UTC), model=model_summary(config)):
            print(line)
    finally:
        catalog.close()
    return 0


def cmd_priors(args: argparse.Namespace) -> int:
    from bonect.daemon.status_report import prior_lines

    _, config = _load(args)
    catalog = _open_catalog(config)
    try:
        lines = prior_lines(catalog, args.state, args.limit)
    finally:
        catalog.close()
    print("\n".join(lines) if lines else "no prior searches (none configured: [[sources]])")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from bonect.daemon.status_report import job_lines

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

    start = command("start", "run the node in the foreground (under systemd)")
    start.add_argument("--role", choices=ROLES, default="all", help=ROLES_HELP)
    start.set_defaults(handler=cmd_start)
    command("status", "queue by state, model in use, timings of the last job, errors").set_defaults(
        handler=cmd_status
    )
    jobs = command("jobs", "list jobs, newest first")
    jobs.add_argument("--state", choices=[s.value for s in JobState])
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(handler=cmd_jobs)
    priors = command("priors", "list prior searches (CTs found at [[sources]]), newest first")
    priors.add_argument("--state", choices=[s.value for s in PriorState])
    priors.add_argument("--limit", type=positive_int, default=50)
    priors.set_defaults(handler=cmd_priors)
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
    from bonect.cli_boundary import run
    from bonect.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run(args.handler, args, prog="bonect-daemon")


if __name__ == "__main__":
    sys.exit(main())
