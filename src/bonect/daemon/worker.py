"""The worker: claim a job, convert its series with the warm model, write the sCT, send it.

One step at a time (:meth:`Worker.run_once`), time passed in; errors become job states:
a series or model problem fails the job with its reason (permanent), a send or disk problem
waits and retries with backoff. Sends are planned per instance and destination before the
first attempt, so a job resumed after a crash sends exactly what is still pending.

Each job is one *generation* of its series' sCT, with UIDs of its own. Once every instance of
a later generation is stored, the worker withdraws the earlier ones: their files leave the
archive, and each destination that may hold one gets an IOCM rejection note
(:mod:`bonect.daemon.rejection`) unless it is configured not to. Where a destination receives
what (every series, or only those it sent itself) is decided when the sends are planned.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from pydicom import dcmread
from pydicom.dataset import Dataset

from bonect.catalog.models import SendStatus
from bonect.catalog.queue import Catalog
from bonect.catalog.records import JobRecord
from bonect.config import Destination
from bonect.converter.dicom_reader import read_mr_files
from bonect.converter.dicom_writer import write_synthetic_ct
from bonect.converter.pipeline import convert, method_identity
from bonect.daemon.metrics import NodeMetrics
from bonect.daemon.models import ModelHolder
from bonect.daemon.rejection import rejection_note, rejection_note_uids, write_rejection_note
from bonect.daemon.sender import (
    STORED_STATUSES,
    DestinationNode,
    OnResult,
    RetryPolicy,
    SendOutcome,
    SendTimeouts,
    send_files,
)
from bonect.errors import BonectError

logger = logging.getLogger(__name__)


class SendIncomplete(BonectError):
    """Some instances are not yet stored at some destination (retryable)."""


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

    @classmethod
    def from_config(cls, destination: Destination) -> Route:
        return cls(
            destination.name,
            DestinationNode.from_config(destination),
            every_series=destination.receives == "all",
            rejection_notes=destination.rejection_notes,
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
    ) -> None:
        self.name = name
        self.catalog = catalog
        self.outgoing = outgoing
        self.models = models
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.last_timings = StageTimings()

    def run_once(self, now: datetime) -> bool:
        """Process one job if one is due; False when there was nothing to do."""
        self.models.refresh()  # between jobs only
        job = self.catalog.claim_next(now, worker_id=self.name)
        if job is None:
            return False
        self.last_timings = StageTimings()
        try:
            self._process(job)
        except (SendIncomplete, OSError) as exc:
            if job.attempts >= self.settings.max_attempts:
                self.catalog.fail(
                    job, f"gave up after {job.attempts} attempts: {exc}", now=self.clock()
                )
            else:
                at = self.clock() + self.settings.retry.delay(job.attempts)
                logger.warning(
                    "job %d: attempt %d failed, retry at %s: %s", job.id, job.attempts, at, exc
                )
                self.catalog.retry_later(job, at=at, reason=str(exc), now=self.clock())
        except BonectError as exc:
            self.catalog.fail(job, str(exc), now=self.clock())
        except Exception as exc:  # boundary: one bad series must not stop the daemon
            logger.exception("job %d failed unexpectedly", job.id)
            self.catalog.fail(job, f"{type(exc).__name__}: {exc}", now=self.clock())
        else:
            logger.info("job %d done: %s", job.id, self.last_timings.seconds)
        return True

    def _process(self, job: JobRecord) -> None:
        if job.output_dir is None or not job.output_dir.is_dir():
            job = self._convert(job)
        job = self.catalog.mark_sending(job, now=self.clock())
        self._send(job)
        self._withdraw_earlier(job)
        self.catalog.finish(job, now=self.clock(), timings=self.last_timings.seconds)

    def _convert(self, job: JobRecord) -> JobRecord:
        started = time.perf_counter()
        instances = self.catalog.instances(job.series_uid)
        series = read_mr_files([i.path for i in instances])
        self.last_timings.add("read", started)
        started = time.perf_counter()
        method = self.models.current
        conversion = convert(
            series.volume,
            method,
            planes=self.settings.planes,
            batch_size=self.settings.batch_size,
            device=self.settings.device,
            uncertainty=False,  # the sCT series does not carry it
        )
        self.last_timings.add("convert", started)
        if self.metrics is not None:
            self.metrics.conversion_seconds.observe(self.last_timings.seconds["convert"])
        started = time.perf_counter()
        name, version, clinical = method_identity(method)
        out_dir = self.outgoing / job.series_uid / f"job{job.id}"
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a half-written output of a dead process
        replaced = [e.generation for e in self.catalog.earlier_jobs(job) if self._was_sent(e)]
        paths = write_synthetic_ct(
            conversion.sct.array,
            series,
            out_dir,
            model_name=name,
            model_version=version,
            method="classical" if name == "classical" else "U-Net",
            clinical_use=clinical,
            generation=job.generation,
            replaces=max(replaced, default=None),
        )
        self.last_timings.add("write", started)
        now = self.clock()
        job = self.catalog.mark_converted(
            job,
            output_dir=out_dir,
            model_version=f"{name} {version}",
            now=now,
            output_series_uid=_header(paths[0], "SeriesInstanceUID") if paths else None,
        )
        names = self._destinations_for(job)
        self.catalog.plan_sends(
            job, [(_header(p, "SOPInstanceUID"), p) for p in paths], names, now=now
        )
        logger.info(
            "job %d: %d sCT instances (generation %d) written with %s",
            job.id,
            len(paths),
            job.generation,
            method.label,
        )
        return job

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

    def _send(self, job: JobRecord) -> None:
        started = time.perf_counter()
        pending = self.catalog.pending_sends(job)
        missing = 0
        for route in self.settings.destinations:
            mine = [s for s in pending if s.destination == route.name]
            if not mine:
                continue
            report = send_files(
                [s.path for s in mine],
                route.node,
                calling_ae=self.settings.calling_ae,
                timeouts=self.settings.timeouts,
                on_result=self._send_recorder(job, route.name),
            )
            missing += len(report.results) - len(report.stored)
        if missing and self.metrics is not None:
            self.metrics.send_failures.inc(missing)
        self.last_timings.add("send", started)
        if missing:
            raise SendIncomplete(f"{missing} instance(s) not yet stored")

    def _withdraw_earlier(self, job: JobRecord) -> None:
        """Withdraw the output of every earlier generation, now that this one is stored.

        Idempotent: each later generation checks them all again, and finds the notes sent.
        """
        earlier = self.catalog.earlier_jobs(job)
        if not earlier:
            return
        started = time.perf_counter()
        unanswered = 0
        for old in earlier:
            if old.output_dir is not None and old.output_dir.exists():
                shutil.rmtree(old.output_dir, ignore_errors=True)
                logger.info("job %d: deleted the output of job %d from the archive", job.id, old.id)
            unanswered += self._reject(job, old)
        self.last_timings.add("withdraw", started)
        if unanswered:
            raise SendIncomplete(f"{unanswered} rejection note(s) not yet answered")

    def _reject(self, job: JobRecord, old: JobRecord) -> int:
        """Plan and send the rejection note of ``old``'s series; how many stay unanswered."""
        if old.output_series_uid is None:
            return 0
        _, note_uid = rejection_note_uids(old.output_series_uid)
        sends = self.catalog.sends(old)
        images = sorted({s.sop_instance_uid for s in sends if s.sop_instance_uid != note_uid})
        routes = {r.name: r for r in self.settings.destinations}
        targets = sorted(
            {
                s.destination
                for s in sends
                if s.sop_instance_uid != note_uid and s.attempts > 0 and s.destination in routes
            }
        )
        skipped = [t for t in targets if not routes[t].rejection_notes]
        if skipped:
            logger.info("job %d: no rejection note of job %d to %s", job.id, old.id, skipped)
        targets = [t for t in targets if routes[t].rejection_notes]
        if not targets or not images:
            return 0
        path = self.outgoing / job.series_uid / "rejections" / f"job{old.id}.dcm"
        if not path.exists():
            write_rejection_note(path, self._note(job, old, images))
        self.catalog.plan_sends(old, [(note_uid, path)], targets, now=self.clock())
        pending = [
            s
            for s in self.catalog.pending_sends(old)
            if s.sop_instance_uid == note_uid and s.destination in targets
        ]
        unanswered = 0
        for send in pending:
            report = send_files(
                [path],
                routes[send.destination].node,
                calling_ae=self.settings.calling_ae,
                timeouts=self.settings.timeouts,
            )
            (result,) = report.results
            if result.outcome is SendOutcome.FAILED:  # a PACS without IOCM may refuse a KOS
                logger.warning(
                    "job %d: %s refused the rejection note of job %d (%s); not sent again",
                    job.id,
                    send.destination,
                    old.id,
                    result.error,
                )
            status = {SendOutcome.STORED: SendStatus.STORED, SendOutcome.FAILED: SendStatus.FAILED}
            self.catalog.record_send(
                old,
                note_uid,
                send.destination,
                status=status.get(result.outcome, SendStatus.PENDING),
                now=self.clock(),
                status_code=result.status,
                error=result.error,
            )
            unanswered += result.outcome is SendOutcome.UNKNOWN
        return unanswered

    def _note(self, job: JobRecord, old: JobRecord, images: Sequence[str]) -> Dataset:
        """The rejection note of ``old``'s sCT series (patient and study from the MR)."""
        instances = self.catalog.instances(job.series_uid)
        if not instances:
            raise OSError(f"series {job.series_uid}: no MR instance left to take the study from")
        source = dcmread(instances[0].path, stop_before_pixels=True)
        description = (
            f"Synthetic CT version {old.generation} (series {old.output_series_uid}) was "
            f"computed before more images of MR series {job.series_uid} arrived; version "
            f"{job.generation} (series {job.output_series_uid}) replaces it."
        )
        return rejection_note(source, str(old.output_series_uid), images, description=description)

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


def _header(path: Path, keyword: str) -> str:
    """One UID of the header of a file we wrote."""
    return str(dcmread(path, stop_before_pixels=True, specific_tags=[keyword])[keyword].value)
