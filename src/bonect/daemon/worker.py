"""The worker: claim a job, convert its series with the warm model, write the sCT, send it.

One step at a time (:meth:`Worker.run_once`), time passed in; errors become job states by
their type alone: a :class:`~bonect.errors.PermanentError` (the series, the model) or an
unexpected exception fails the job with its reason, a :class:`~bonect.errors.RetryableError`
(a destination, the disk or the catalog that did not answer) waits and retries with backoff.
When the catalog cannot take the outcome either, the worker keeps it and records it before
claiming anything else; a job taken from it meanwhile (:class:`ClaimLost`) is left to its new
holder. Sends are planned per instance and destination before the first attempt, so a job
resumed after a crash sends exactly what is still pending.

The sCT is sent while it is written: its UIDs and file names are known before the first file
exists (:func:`~bonect.converter.dicom_writer.planned_sct_instances`), so the sends are planned
first, and a thread per destination (:mod:`bonect.daemon.send_stream`) sends each file as soon
as the writer has it whole (with ``[sender] transport = "dcmsend"``: a ``dcmsend`` process for
what the writer has ready each time the previous one ends). The job stays ``running`` until the
last file is written and flushed; a crash before that converts and writes again with the same
UIDs, and sends only what was not stored (a conversion by another model, whose UIDs differ,
replaces the plan: :meth:`~bonect.catalog.sends.SendLedger.plan_send_groups`). The job's stage
timings say so: ``write`` includes the sending beside it, ``record`` the uncertainty object and
the catalog's records, ``streamed send tail`` the wait for the senders after the last file, and
``send`` what is sent after that (retries, the uncertainty object).

A job is claimed with a lease (``[catalog] lease_seconds``), renewed by a
:class:`~bonect.daemon.lease.LeaseKeeper` while the worker holds it and once more before the
sCT is written and before it is sent; a worker that died is so replaced by another once its
lease has ended, and a worker that was cut off that long stops at its next stage boundary.

Each job is one *generation* of its series' sCT, with UIDs of its own. Once every instance of
a later generation is stored, the worker withdraws the earlier ones
(:mod:`bonect.daemon.withdraw`). Where a destination receives what (every series, or only
those it sent itself) is decided when the sends are planned.

With a U-Net in several planes, the share of the head whose planes disagree by more than the
model's threshold (:mod:`bonect.uncertainty`) goes into the sCT's Image Comments and the job
record; a destination with ``uncertainty`` also gets the uncertainty object
(:mod:`bonect.converter.uncertainty_object`), written beside the sCT and planned in the same
send ledger, after the sCT instances. (Over 400 lines: a job's steps, from claim to
withdrawal, read in order in one place; the parts they call live in their own modules.)
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import torch

from bonect.audit import MINOR_FAILURE, SUCCESS, AuditEvent, AuditTrail, Participant, Subject
from bonect.catalog.jobs import JobState
from bonect.catalog.queue import Catalog, ClaimLost
from bonect.catalog.records import JobRecord, UncertaintySummary
from bonect.catalog.tables import SendStatus
from bonect.config import Destination, SendTransport
from bonect.converter.dicom_reader import read_mr_files
from bonect.converter.dicom_writer import (
    SCT_CONTEXT,
    WrittenSeries,
    planned_sct_instances,
    write_synthetic_ct,
)
from bonect.converter.pipeline import (
    Conversion,
    convert,
    method_identity,
    uncertainty_threshold_hu,
)
from bonect.converter.uncertainty_object import (
    KINDS,
    UncertaintyKind,
    write_uncertainty_object,
)
from bonect.daemon.lease import LeaseKeeper
from bonect.daemon.model_holder import ModelHolder
from bonect.daemon.prometheus import NodeMetrics
from bonect.daemon.send_stream import FileFeed, SenderThreads
from bonect.daemon.sender import (
    STORED_STATUSES,
    DestinationNode,
    OnResult,
    RetryPolicy,
    SendOutcome,
    SendReport,
    SendTimeouts,
    send_batches,
    send_files,
    send_stream,
)
from bonect.daemon.simulated import IDENTITY as SIMULATED
from bonect.daemon.simulated import simulate
from bonect.daemon.withdraw import Withdrawal
from bonect.errors import PermanentError, RetryableError, storage_errors
from bonect.uncertainty import uncertain_share

logger = logging.getLogger(__name__)


def _summary(conversion: Conversion, threshold: float | None) -> UncertaintySummary | None:
    """The share of the head whose planes disagree by more than ``threshold``; None without
    planes."""
    spread, head = conversion.uncertainty, conversion.head
    if threshold is None or spread is None or head is None:
        return None
    return UncertaintySummary(uncertain_share(spread.array, head, threshold), threshold)


Streamed = Mapping[str, SendReport]  # what was sent while the sCT was written, by destination


class SendIncomplete(RetryableError):
    """Some instances are not yet stored at some destination (retryable)."""


@dataclass(frozen=True)
class Outcome:
    """What became of a claimed job: the state to record, with why and until when."""

    job: JobRecord
    state: JobState  # DONE, RETRY_WAIT or FAILED
    reason: str | None = None
    retry_at: datetime | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class StageTimings:
    """Seconds per stage of the last job, for status and the logs."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] = round(time.perf_counter() - started, 3)


@dataclass(frozen=True, slots=True)
class Route:
    """A destination as the worker sees it: where, and what it receives."""

    name: str
    node: DestinationNode
    every_series: bool = True  # False: only the series it sent (with return_to_sender)
    rejection_notes: bool = True  # withdraw a replaced sCT series there with an IOCM note
    uncertainty: UncertaintyKind | None = None  # the uncertainty object it also receives

    @classmethod
    def from_config(cls, destination: Destination) -> Route:
        kind = destination.uncertainty
        return cls(
            destination.name,
            DestinationNode.from_config(destination),
            every_series=destination.receives == "all",
            rejection_notes=destination.rejection_notes,
            uncertainty=None if kind == "none" else kind,
        )


@dataclass(frozen=True)
class WorkerSettings:
    calling_ae: str
    destinations: Sequence[Route]
    planes: Sequence[str]
    batch_size: int
    device: torch.device
    retry: RetryPolicy
    max_attempts: int
    timeouts: SendTimeouts
    return_to_sender: bool = False
    lease: timedelta = timedelta(seconds=120)  # [catalog] lease_seconds
    simulated_forward_seconds: float | None = None  # tests and bench only (daemon.simulated)
    transport: SendTransport = "pynetdicom"  # [sender] transport


class Worker:
    """Claims and processes jobs from the catalog."""

    def __init__(
        self,
        *,
        name: str,
        catalog: Catalog,
        outgoing: Path,
        models: ModelHolder,
        settings: WorkerSettings,
        clock: Callable[[], datetime],
        metrics: NodeMetrics | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self.audit = audit
        self.name = name
        self.catalog = catalog
        self.outgoing = outgoing
        self.models = models
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.last_timings = StageTimings()
        self.unrecorded: Outcome | None = None  # an outcome the catalog could not take yet
        self.lease: LeaseKeeper | None = None  # renews the claim on the job in hand
        routes = settings.destinations
        self.withdrawal = Withdrawal(
            catalog=catalog,
            outgoing=outgoing,
            notes_to={r.name: r.node for r in routes if r.rejection_notes},
            no_notes=frozenset(r.name for r in routes if not r.rejection_notes),
            calling_ae=settings.calling_ae,
            timeouts=settings.timeouts,
            clock=clock,
        )

    def run_once(self, now: datetime) -> bool:
        """Process one job if one is due; False when there was nothing to do.

        An outcome the catalog could not take last time is recorded first; while the catalog
        still refuses it, that error is raised (the node backs off) and nothing is claimed.
        """
        self.models.refresh()  # between jobs only
        if self.unrecorded is not None:
            self._record(self.unrecorded)  # raises while the catalog is unavailable
            self.unrecorded = None
        lease = self.settings.lease
        job = self.catalog.claim_next(now, worker_id=self.name, lease=lease)
        if job is None:
            return False
        self.last_timings = StageTimings()
        self.lease = LeaseKeeper.start(self.catalog, job, lease=lease, clock=self.clock)
        try:
            outcome = self._outcome(job)
        finally:
            self.lease.stop()
            self.lease = None
        if outcome is not None:
            try:
                self._record(outcome)
            except Exception as exc:  # the catalog is unavailable: keep it for the next step
                logger.warning(
                    "job %d: could not record %s, will again: %s", job.id, outcome.state, exc
                )
                self.unrecorded = outcome
        return True

    def _outcome(self, job: JobRecord) -> Outcome | None:
        """Process ``job`` and say what became of it; None when it was taken from us."""
        try:
            self._process(job)
        except ClaimLost as exc:
            logger.warning("job %d: %s; left to its new holder", job.id, exc)
            return None
        except RetryableError as exc:
            if job.attempts >= self.settings.max_attempts:
                reason = f"gave up after {job.attempts} attempts: {exc}"
                return Outcome(job, JobState.FAILED, reason)
            at = self.clock() + self.settings.retry.delay(job.attempts)
            logger.warning(
                "job %d: attempt %d failed, retry at %s: %s", job.id, job.attempts, at, exc
            )
            return Outcome(job, JobState.RETRY_WAIT, str(exc), retry_at=at)
        except PermanentError as exc:
            return Outcome(job, JobState.FAILED, str(exc))
        except Exception as exc:  # boundary: one bad series must not stop the daemon
            logger.exception("job %d failed unexpectedly", job.id)
            return Outcome(job, JobState.FAILED, f"{type(exc).__name__}: {exc}")
        logger.info("job %d done: %s", job.id, self.last_timings.seconds)
        return Outcome(job, JobState.DONE, timings=dict(self.last_timings.seconds))

    def _record(self, outcome: Outcome) -> None:
        """Record ``outcome`` in the catalog; a job no longer ours is left alone."""
        job, now = outcome.job, self.clock()
        try:
            if outcome.state is JobState.DONE:
                self.catalog.finish(job, now=now, timings=outcome.timings)
            elif outcome.state is JobState.RETRY_WAIT and outcome.retry_at is not None:
                reason = outcome.reason or "retry"
                self.catalog.retry_later(job, at=outcome.retry_at, reason=reason, now=now)
            else:
                self.catalog.fail(job, outcome.reason or "failed", now=now)
        except ClaimLost as exc:
            logger.warning("job %d: %s; its outcome is dropped", job.id, exc)

    def _renew_lease(self) -> None:
        """At a stage boundary: renew the claim, or raise ClaimLost if the job was taken."""
        if self.lease is not None:
            self.lease.renew()

    def _process(self, job: JobRecord) -> None:
        streamed: Streamed = {}
        if job.output_dir is None or not job.output_dir.is_dir():
            job, streamed = self._convert(job)
        self._renew_lease()
        job = self.catalog.mark_sending(job, now=self.clock())
        self._send(job, streamed)
        self._withdraw_earlier(job)

    def _convert(self, job: JobRecord) -> tuple[JobRecord, Streamed]:
        """Convert, write and (streaming) send the sCT; the job and what was sent meanwhile."""
        started = time.perf_counter()
        instances = self.catalog.instances(job.series_uid)
        with storage_errors(f"job {job.id}: reading the MR series"):
            series = read_mr_files([i.path for i in instances])
        self.last_timings.add("read", started)
        started = time.perf_counter()
        method = self.models.current
        threshold = uncertainty_threshold_hu(method)
        name, version, clinical = method_identity(method)
        label = method.label
        if (seconds := self.settings.simulated_forward_seconds) is not None:
            conversion, threshold = simulate(series.volume, seconds), None
            (name, version, clinical), label = SIMULATED, "a simulated conversion"
        else:
            conversion = convert(
                series.volume,
                method,
                planes=self.settings.planes,
                batch_size=self.settings.batch_size,
                device=self.settings.device,
                uncertainty=threshold is not None,
            )
        unsure = _summary(conversion, threshold)
        if unsure is None:  # the classical map, or a single plane configured
            logger.info(
                "job %d: %s gives no planes to compare: no uncertainty summary nor object",
                job.id,
                label,
            )
        self.last_timings.add("convert", started)
        if self.metrics is not None:
            self.metrics.conversion_seconds.observe(self.last_timings.seconds["convert"])
        started = time.perf_counter()
        self._renew_lease()  # before touching the output folder: still ours?
        out_dir = self.outgoing / job.series_uid / f"job{job.id}"
        replaced = [e.generation for e in self.catalog.earlier_jobs(job) if self._was_sent(e)]
        names = self._destinations_for(job)
        kind = "classical" if name == "classical" else "U-Net"
        _, planned = planned_sct_instances(
            series, out_dir, model_name=name, model_version=version, method=kind,
            generation=job.generation,
        )  # fmt: skip
        # the sends are planned before the first file exists; a destination is sent each file
        # as soon as it is written (pynetdicom), or what is written each time the previous
        # dcmsend process ends
        self.catalog.plan_send_groups(job, [(planned, names)], now=self.clock(), replace=True)
        feed = FileFeed()
        senders = self._stream_senders(job, feed)
        try:
            with storage_errors(f"job {job.id}: writing the sCT to {out_dir}"):
                if out_dir.exists():
                    shutil.rmtree(out_dir)  # a half-written output of a dead process
                written = write_synthetic_ct(
                    conversion.sct.array,
                    series,
                    out_dir,
                    model_name=name,
                    model_version=version,
                    method=kind,
                    clinical_use=clinical,
                    generation=job.generation,
                    replaces=max(replaced, default=None),
                    uncertainty_summary=None if unsure is None else unsure.text(),
                    on_written=feed.put,
                )
        except BaseException:
            feed.close()
            senders.wait()  # what was written and sent stays recorded
            raise
        feed.close()
        self.last_timings.add("write", started)
        started = time.perf_counter()
        with storage_errors(f"job {job.id}: writing the uncertainty object to {out_dir}"):
            extra = self._write_uncertainty(job, conversion, written, out_dir, names, unsure)
        now = self.clock()
        self.catalog.plan_send_groups(job, extra, now=now)
        job = self.catalog.mark_converted(
            job,
            output_dir=out_dir,
            model_version=f"{name} {version}",
            now=now,
            output_series_uid=written.series_uid or None,
            uncertainty=unsure,
        )
        logger.info(
            "job %d: %d sCT instances (generation %d) written with %s%s",
            job.id,
            len(written.paths),
            job.generation,
            label,
            "" if unsure is None else f"; {unsure.text()}",
        )
        self.last_timings.add("record", started)
        started = time.perf_counter()
        streamed = senders.join()
        self.last_timings.add("streamed send tail", started)
        return job, streamed

    def _stream_senders(self, job: JobRecord, feed: FileFeed) -> SenderThreads[SendReport]:
        """A sender per destination with sends pending, each taking its files from ``feed``
        as they are written."""
        pending = self.catalog.pending_sends(job)
        senders: dict[str, Callable[[FileFeed], SendReport]] = {}
        for route in self.settings.destinations:
            wanted = frozenset(s.path for s in pending if s.destination == route.name)
            if wanted:
                senders[route.name] = partial(self._send_as_written, job, route, wanted)
        return SenderThreads(feed, senders)

    def _send_as_written(
        self, job: JobRecord, route: Route, wanted: frozenset[Path], feed: FileFeed
    ) -> SendReport:
        if self.settings.transport == "dcmsend":
            return send_batches(
                feed.batches(wanted),
                route.node,
                calling_ae=self.settings.calling_ae,
                timeouts=self.settings.timeouts,
                on_result=self._send_recorder(job, route.name),
            )
        return send_stream(
            feed.only(wanted),
            route.node,
            contexts=[SCT_CONTEXT],
            calling_ae=self.settings.calling_ae,
            timeouts=self.settings.timeouts,
            on_result=self._send_recorder(job, route.name),
        )

    def _write_uncertainty(
        self,
        job: JobRecord,
        conversion: Conversion,
        written: WrittenSeries,
        out_dir: Path,
        names: Sequence[str],
        unsure: UncertaintySummary | None,
    ) -> list[tuple[list[tuple[str, Path]], list[str]]]:
        """Write each kind of uncertainty object that a destination of this job asked for;
        returns each with its destinations, for :meth:`Catalog.plan_send_groups`."""
        if conversion.uncertainty is None or unsure is None:
            return []  # no planes: said once by the caller
        groups = []
        for kind in KINDS:
            routes = self.settings.destinations
            targets = [r.name for r in routes if r.uncertainty == kind and r.name in names]
            if not targets:
                continue
            try:
                obj = write_uncertainty_object(
                    kind,
                    conversion.uncertainty.array,
                    written.datasets,
                    out_dir,
                    threshold_hu=unsure.threshold_hu,
                )
            except OSError:
                raise  # the disk: the job retries
            except Exception:  # an optional QA object must not cost the sCT
                logger.exception("job %d: no uncertainty %s: it could not be built", job.id, kind)
                continue
            groups.append(([(obj.sop_instance_uid, obj.path)], targets))
        return groups

    def _was_sent(self, job: JobRecord) -> bool:
        """Whether some instance of ``job``'s output was sent (so a PACS may hold it)."""
        return any(s.attempts > 0 for s in self.catalog.sends(job))

    def _destinations_for(self, job: JobRecord) -> list[str]:
        """Every destination that receives every series, and with ``return_to_sender`` the
        ones whose AE title is the calling AE title that delivered the MR series."""
        routes = self.settings.destinations
        names = [r.name for r in routes if r.every_series]
        if not self.settings.return_to_sender:
            return names
        series = self.catalog.series(job.series_uid)
        caller = series.calling_ae if series is not None else None
        if caller is None:
            logger.info("job %d: the series came from the drop folder, nobody to return to", job.id)
            return names
        back = [r.name for r in routes if r.node.ae_title.strip() == caller]
        if not back:
            logger.warning(
                "job %d: no destination has the AE title %r of the sender; not returned",
                job.id,
                caller,
            )
        return names + [n for n in back if n not in names]

    def _send(self, job: JobRecord, streamed: Streamed) -> None:
        """Send what is pending and was not tried in this attempt (``streamed``: what was sent
        while the sCT was written, by destination); SendIncomplete while any is not stored."""
        started = time.perf_counter()
        pending = self.catalog.pending_sends(job)
        missing = 0
        for route in self.settings.destinations:
            results = list(streamed[route.name].results) if route.name in streamed else []
            tried = {r.sop_instance_uid for r in results}
            mine = [
                s
                for s in pending
                if s.destination == route.name and s.sop_instance_uid not in tried
            ]
            if mine:
                report = send_files(
                    [s.path for s in mine],
                    route.node,
                    calling_ae=self.settings.calling_ae,
                    timeouts=self.settings.timeouts,
                    on_result=self._send_recorder(job, route.name),
                    transport=self.settings.transport,
                )
                results.extend(report.results)
            if not results:
                continue
            stored = sum(r.outcome is SendOutcome.STORED for r in results)
            missing += len(results) - stored
            self._audit_send(job, route, stored=stored, tried=len(results))
        if missing and self.metrics is not None:
            self.metrics.send_failures.inc(missing)
        self.last_timings.add("send", started)
        if missing:
            raise SendIncomplete(f"{missing} instance(s) not yet stored")

    def _audit_send(self, job: JobRecord, route: Route, *, stored: int, tried: int) -> None:
        if self.audit is None:
            return
        node = route.node
        self.audit.record(
            AuditEvent.SCT_SENT,
            outcome=SUCCESS if stored == tried else MINOR_FAILURE,
            reason="" if stored == tried else f"{tried - stored} of {tried} not yet stored",
            participants=[
                Participant(self.settings.calling_ae, requestor=True),
                Participant(node.ae_title, requestor=False, address=f"{node.host}:{node.port}"),
            ],
            subject=Subject(None, job.study_uid, job.output_series_uid, stored),
            detail={"destination": route.name, "job": job.id, "generation": job.generation},
        )

    def _withdraw_earlier(self, job: JobRecord) -> None:
        """Withdraw the output of every earlier generation, now that this one is stored."""
        earlier = self.catalog.earlier_jobs(job)
        if not earlier:
            return
        started = time.perf_counter()
        unanswered = self.withdrawal.withdraw(job, earlier)
        self.last_timings.add("withdraw", started)
        if unanswered:
            raise SendIncomplete(f"{unanswered} rejection note(s) not yet answered")

    def _send_recorder(self, job: JobRecord, destination: str) -> OnResult:
        """Record each answer as it arrives, so that a series half-sent when the process
        dies resumes with exactly the instances not yet stored."""

        def record(sop_instance_uid: str, code: int | None, error: str | None) -> None:
            # an unknown outcome (timeout) or a refusal stays pending: the job's backoff
            # sends it again, with the same SOP Instance UID, so nothing is duplicated
            stored = code is not None and code in STORED_STATUSES
            self.catalog.record_send(
                job,
                sop_instance_uid,
                destination,
                status=SendStatus.STORED if stored else SendStatus.PENDING,
                now=self.clock(),
                status_code=code,
                error=error,
            )

        return record
