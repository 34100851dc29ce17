"""The running node: wires archive, catalog, SCP, settle, worker, drop folder and metrics.

:meth:`Node.open` builds everything from the config (I/O happens there, not in constructors);
:meth:`Node.step` does one round of settling, converting and housekeeping at a given time, and
:meth:`Node.run` repeats it until the stop flag is set (by SIGTERM in ``bonect-daemon start``).

One host runs it all (:class:`NodeRole` ``all``). Several hosts on one PostgreSQL catalog and a
shared archive split it: ``receiver`` hosts run the SCP, the drop folder, settling and queueing;
``worker`` hosts open no DICOM port and only convert and send, taking jobs over from a dead
worker once its lease ends (:mod:`bonect.daemon.lease`, :mod:`bonect.daemon.roles`). (Over 400
lines: the assembly of every part, in the order a start needs, reads best in one place.)
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch

from bonect.audit import AuditEvent, AuditTrail, Participant, audit_trail
from bonect.catalog.engine import catalog_url
from bonect.catalog.queue import Catalog
from bonect.catalog.tables import Role, SettleState
from bonect.config import Config
from bonect.converter.inference import pick_device
from bonect.daemon.archive import Archive
from bonect.daemon.connection_guard import ConnectionLimits
from bonect.daemon.dropfolder import DropFolder
from bonect.daemon.loop import WOKEN_IDLE_CAP_SECONDS, StepGuard, run_loop
from bonect.daemon.model_holder import ModelHolder
from bonect.daemon.prometheus import NodeMetrics
from bonect.daemon.receive import Receiver
from bonect.daemon.roles import NodeRole, requeue_own_orphans
from bonect.daemon.scp import AccessPolicy, StorageServer, server_tls_context
from bonect.daemon.sender import RetryPolicy, SendTimeouts
from bonect.daemon.settle import QuietWatch, settle_once
from bonect.daemon.simulated import ENVIRONMENT_VARIABLE, simulated_forward_seconds
from bonect.daemon.worker import Route, Worker, WorkerSettings
from bonect.dicom.header import InstanceHeader

logger = logging.getLogger(__name__)


#: The loop's backoff after a failed step: 1 s, doubled while failures go on, at most a minute.
STEP_BACKOFF = RetryPolicy(initial_seconds=1.0, cap_seconds=60.0)
HOUSEKEEPING = timedelta(minutes=10)  # between two rounds of housekeeping


def utc_now() -> datetime:
    return datetime.now(UTC)


def _start_server(
    config: Config, receiver: Receiver, audit: AuditTrail | None
) -> tuple[StorageServer, ssl.SSLContext | None]:
    """The Storage SCP on ``[node]``'s port, with ``[security]``'s TLS and allow-lists."""
    security = config.security
    tls = None
    if security.tls_certificate is not None and security.tls_key is not None:
        tls = server_tls_context(security.tls_certificate, security.tls_key, security.tls_ca)
    server = StorageServer.start(
        ae_title=config.node.ae_title,
        host=config.node.host,
        port=config.node.port,
        receiver=receiver,
        policy=access_policy(config),
        ssl_context=tls,
        limits=ConnectionLimits(
            max_associations=config.node.max_associations,
            max_pending=config.node.max_pending_connections,
            request_timeout=config.node.request_timeout_seconds,
        ),
        network_timeout=config.node.idle_timeout_seconds,
        audit=audit,
    )
    if security.allow_any_peer:
        logger.warning("allow_any_peer is set: any address may store to %s", config.node.ae_title)
    return server, tls


def _open_worker(
    config: Config,
    *,
    name: str,
    catalog: Catalog,
    outgoing: Path,
    models: ModelHolder,
    device: torch.device,
    clock: Callable[[], datetime],
    metrics: NodeMetrics,
    audit: AuditTrail | None,
) -> Worker:
    """The worker and sender, with ``[sender]``'s retries and ``[catalog]``'s lease."""
    sender = config.sender
    simulated = simulated_forward_seconds(os.environ)
    if simulated is not None:
        logger.warning(
            "%s is set: each conversion is a %g s sleep and its sCT is air (tests and "
            "benchmarks only)",
            ENVIRONMENT_VARIABLE,
            simulated,
        )
    settings = WorkerSettings(
        calling_ae=config.node.ae_title,
        destinations=[Route.from_config(d) for d in config.destinations],
        planes=config.converter.planes,
        batch_size=config.converter.batch_size,
        device=device,
        retry=RetryPolicy(
            initial_seconds=sender.retry_initial_seconds, cap_seconds=sender.retry_max_seconds
        ),
        max_attempts=sender.max_attempts,
        timeouts=SendTimeouts(dimse=sender.dimse_timeout_seconds),
        return_to_sender=sender.return_to_sender,
        lease=timedelta(seconds=config.catalog.lease_seconds),
        simulated_forward_seconds=simulated,
        transport=sender.transport,
    )
    idle = [d.name for d in config.destinations if d.receives == "returns"]
    if idle and not sender.return_to_sender:
        logger.warning(
            "destination(s) %s only receive returns, but sender.return_to_sender is off", idle
        )
    return Worker(
        name=name,
        catalog=catalog,
        outgoing=outgoing,
        models=models,
        settings=settings,
        clock=clock,
        metrics=metrics,
        audit=audit,
    )


class CatalogSink:
    """The receive path's sink: record each archived instance in the catalog, count it."""

    def __init__(self, catalog: Catalog, wake: threading.Event, metrics: NodeMetrics) -> None:
        self._catalog = catalog
        self._wake = wake
        self._metrics = metrics

    def record(
        self,
        header: InstanceHeader,
        path: Path,
        *,
        received_at: datetime,
        association_id: str,
        calling_ae: str | None,
    ) -> None:
        self._catalog.record_instance(
            header,
            path,
            received_at=received_at,
            association_id=association_id,
            calling_ae=calling_ae or None,
        )
        self._metrics.instances_received.inc()

    def association_ended(self, association_id: str, at: datetime, *, aborted: bool) -> None:
        if aborted:
            if self._catalog.association_aborted(association_id, at):
                logger.warning(
                    "association %s aborted: its series wait for the rest "
                    "(settle.aborted_quiet_seconds) unless their expected count is reached",
                    association_id,
                )
            return
        self._catalog.association_released(association_id, at)
        self._wake.set()  # settle may now complete a series without waiting


def access_policy(config: Config) -> AccessPolicy:
    """The allow-lists: loopback only unless networks are listed or any peer is allowed."""
    security = config.security
    titles = security.allowed_ae_titles or None
    if security.allow_any_peer:
        networks = None
    elif security.allowed_networks:
        networks = security.allowed_networks
    else:
        networks = ("127.0.0.0/8", "::1")
    return AccessPolicy.build(
        calling_ae_titles=titles, networks=networks, move_sources=source_addresses(config)
    )


def source_addresses(config: Config) -> list[str]:
    """The addresses of the ``[[sources]]`` hosts, resolved once at start: the only peers
    whose C-STOREs may answer a C-MOVE this node asked for (none without sources)."""
    addresses: list[str] = []
    for source in config.sources:
        try:
            found = socket.getaddrinfo(source.host, source.port, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            logger.warning("source %s: cannot resolve %s (%s)", source.name, source.host, exc)
            continue
        addresses.extend(str(info[4][0]) for info in found)
    return sorted(set(addresses))


@dataclass
class Node:
    config: Config
    catalog: Catalog
    archive: Archive
    outgoing: Path
    server: StorageServer | None  # None: a worker host (no DICOM port)
    worker: Worker | None  # None: a receiver host (converts nothing)
    models: ModelHolder | None  # None: a receiver host
    dropfolder: DropFolder | None  # None: a worker host
    metrics: NodeMetrics
    wake: threading.Event
    clock: Callable[[], datetime]
    audit: AuditTrail | None = None  # [audit]: the security-relevant events
    role: NodeRole = NodeRole.ALL
    last_housekeeping: datetime | None = None
    guard: StepGuard = field(default_factory=lambda: StepGuard(STEP_BACKOFF))
    jobs_queued: threading.Event = field(default_factory=threading.Event)  # wakes the worker
    quiet_watch: QuietWatch = field(default_factory=QuietWatch)  # timers on a monotonic clock

    def __post_init__(self) -> None:
        if self.guard.clock is None:
            self.guard.clock = self.clock

    @property
    def failed_steps(self) -> int:
        """Steps in a row that failed (of :meth:`step`, or of the worker's loop in :meth:`run`)."""
        return self.guard.failed_steps

    @property
    def resume_at(self) -> datetime | None:
        """No step before this, after a failed one."""
        return self.guard.resume_at

    @classmethod
    def open(
        cls,
        config: Config,
        *,
        role: NodeRole = NodeRole.ALL,
        clock: Callable[[], datetime] = utc_now,
    ) -> Node:
        storage = config.storage.dir
        storage.mkdir(parents=True, exist_ok=True)
        catalog = Catalog.open(catalog_url(storage, config.catalog.url))
        worker_prefix = f"{socket.gethostname()}:"
        if role.converts:
            requeued = requeue_own_orphans(catalog, clock(), worker_prefix)
            if requeued:
                logger.warning("jobs left running by a stopped process queued again: %s", requeued)
        audit = audit_trail(config, process="daemon")
        archive = Archive.open(storage / "archive", fsync=config.storage.fsync)
        if role.receives:  # a worker host leaves the receivers' files and associations alone
            archive.remove_partial_writes()  # a killed process's; before anything is received
            cut = catalog.associations_cut_by_a_stop(clock())
            if cut:
                logger.warning(
                    "%d series were being received when the daemon stopped: they wait for the "
                    "rest (settle.aborted_quiet_seconds) unless their expected count is reached",
                    cut,
                )
        outgoing = storage / "outgoing"
        outgoing.mkdir(parents=True, exist_ok=True)
        device = pick_device(config.converter.device)
        models = None
        if role.converts:
            models = ModelHolder.open(
                config.converter.model,
                config.model_registry,
                device,
                config.converter.precision,
            )
        metrics = NodeMetrics.create(
            catalog,
            model_label=lambda: models.label if models is not None else "none (receiver)",
            clock=clock,
        )
        wake = threading.Event()
        server = dropfolder = tls = None
        if role.receives:
            receiver = Receiver(
                archive=archive,
                sink=CatalogSink(catalog, wake, metrics),
                reserve_bytes=config.storage.reserve_mb * 1024 * 1024,
                max_dataset_bytes=config.storage.max_dataset_mb * 1024 * 1024,
                clock=clock,
            )
            server, tls = _start_server(config, receiver, audit)
            dropfolder = DropFolder.open(storage, receiver=receiver)
        worker = None
        if models is not None:
            worker = _open_worker(
                config,
                name=f"{worker_prefix}{os.getpid()}:0",
                catalog=catalog,
                outgoing=outgoing,
                models=models,
                device=device,
                clock=clock,
                metrics=metrics,
                audit=audit,
            )
        where = (
            "no DICOM port" if server is None else f"listening on {config.node.host}:{server.port}"
        )
        logger.info(
            "%s (%s) %s, storage %s, model %s, %d destination(s)",
            config.node.ae_title,
            role.value,
            where,
            storage,
            "none" if models is None else models.label,
            len(config.destinations),
        )
        return cls(
            config=config,
            catalog=catalog,
            archive=archive,
            outgoing=outgoing,
            server=server,
            worker=worker,
            models=models,
            dropfolder=dropfolder,
            metrics=metrics,
            wake=wake,
            clock=clock,
            audit=audit,
            role=role,
            # the settle timers' second clock: monotonic, unless a clock was given (tests,
            # simulations), whose time then drives both
            quiet_watch=QuietWatch(
                time.monotonic if clock is utc_now else lambda: clock().timestamp()
            ),
        )._audit_start(None if server is None else server.port, tls is not None)

    @property
    def model_label(self) -> str:
        """The method in use, for the status page and metrics ("none" on a receiver host)."""
        return "none (receiver)" if self.models is None else self.models.label

    def _audit_start(self, port: int | None, tls: bool) -> Node:
        """Record what this start runs with (``configuration_loaded``); no patient data."""
        if self.audit is not None:
            config = self.config
            self.audit.record(
                AuditEvent.CONFIGURATION_LOADED,
                participants=[Participant(config.node.ae_title, requestor=False)],
                detail={
                    "role": self.role.value,
                    "port": port,
                    "tls": tls,
                    "client_certificates": tls and config.security.tls_ca is not None,
                    "allowed_networks": list(config.security.allowed_networks),
                    "allow_any_peer": config.security.allow_any_peer,
                    "allowed_ae_titles": list(config.security.allowed_ae_titles),
                    "destinations": [d.name for d in config.destinations],
                    "sources": [s.name for s in config.sources],
                    "model": self.model_label,
                },
            )
        return self

    def step(self, now: datetime) -> bool:
        """Settle what is complete, process one job, then housekeeping when due; True when a
        job was processed. One thread does it all: tests drive the node with it, and
        :meth:`run` with a worker and no receiving.

        Never raises: :class:`~bonect.daemon.loop.StepGuard` is the error boundary.
        """
        return self.guard.attempt(
            now, lambda: self._settle(now), lambda: self._work(now), lambda: self._tidy(now)
        )

    def _settle(self, now: datetime) -> bool:
        """Queue the series that are complete (a receiving node's duty); False: not a job."""
        if not self.role.receives:
            return False
        queued = settle_once(
            self.catalog,
            self.config.rules,
            now,
            quiet_seconds=self.config.settle.quiet_seconds,
            aborted_quiet_seconds=self.config.settle.aborted_quiet_seconds,
            audit=self.audit,
            watch=self.quiet_watch,
        )
        if queued:
            self.metrics.series_completed.inc(len(queued))
            self.jobs_queued.set()
        return False

    def _work(self, now: datetime) -> bool:
        return self.worker.run_once(now) if self.worker is not None else False

    def _tidy(self, now: datetime) -> bool:
        due = self.last_housekeeping is None or now - self.last_housekeeping > HOUSEKEEPING
        if due and self.role.receives:  # the shared archive's, done by its receivers
            self.last_housekeeping = now  # first: a failing housekeeping waits for its turn
            self.housekeeping(now)
        return False

    def housekeeping(self, now: datetime) -> None:
        """Delete ignored series at once, and sCT outputs older than the retention period.

        Received bone MR and CT are kept: they are the local site's training data.
        """
        for series in self.catalog.list_series(role=Role.IGNORE, settle_state=SettleState.SETTLED):
            self._remove_series_files(series.study_uid, series.series_uid)
        days = self.config.storage.retention_days
        if days <= 0:
            return
        cutoff = now - timedelta(days=days)
        for series in self.catalog.list_series(
            role=Role.CONVERT, settle_state=SettleState.SETTLED, settled_before=cutoff
        ):
            shutil.rmtree(self.outgoing / series.series_uid, ignore_errors=True)

    def _remove_series_files(self, study_uid: str, series_uid: str) -> None:
        folder = self.archive.incoming / study_uid / series_uid
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("removed the files of series %s", series_uid)

    def run(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set, waking early on an association's end.

        A node that receives and converts runs two loops: settling and housekeeping in a
        thread of their own, the worker in this one, each with its own error boundary. A
        series that arrives during a conversion is settled and queued when it is complete, not
        when the conversion ends; the worker is woken when a job is queued.
        """
        if self.models is not None:
            self.models.watch()
        if self.dropfolder is not None:
            self.dropfolder.start()
        if self.worker is None or not self.role.receives:
            run_loop(stop, self.step, self.guard, self.wake, self.clock)
            return
        receiving = StepGuard(STEP_BACKOFF, name="settle step", clock=self.clock)

        def settle_step(now: datetime) -> bool:
            return receiving.attempt(now, lambda: self._settle(now), lambda: self._tidy(now))

        def work_step(now: datetime) -> bool:
            return self.guard.attempt(now, lambda: self._work(now))

        # each loop is woken for its work (an association's end; a job queued here), so idle
        # they poll only for timers (the quiet timer, retries) and other hosts' or tools' jobs
        settler = threading.Thread(
            target=run_loop,
            args=(stop, settle_step, receiving, self.wake, self.clock),
            kwargs={"idle_cap": WOKEN_IDLE_CAP_SECONDS},
            name="bonect-settle",
        )
        settler.start()
        try:
            run_loop(
                stop,
                work_step,
                self.guard,
                self.jobs_queued,
                self.clock,
                idle_cap=WOKEN_IDLE_CAP_SECONDS,
            )
        finally:
            stop.set()  # (already set, unless the worker's loop ended by an exception)
            settler.join()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.dropfolder is not None:
            self.dropfolder.stop()
        if self.models is not None:
            self.models.stop()
        self.metrics.stop()
        self.catalog.close()
