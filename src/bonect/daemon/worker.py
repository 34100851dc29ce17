"""The worker: claim a job, convert its series with the warm model, write the sCT, send it.

One step at a time (:meth:`Worker.run_once`), time passed in; errors become job states:
a series or model problem fails the job with its reason (permanent), a send or disk problem
waits and retries with backoff. Sends are planned per instance and destination before the
first attempt, so a job resumed after a crash sends exactly what is still pending.
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

from bonect.catalog.models import SendStatus
from bonect.catalog.queue import Catalog
from bonect.catalog.records import JobRecord
from bonect.converter.dicom_reader import read_mr_files
from bonect.converter.dicom_writer import write_synthetic_ct
from bonect.converter.pipeline import convert, method_identity
from bonect.daemon.metrics import NodeMetrics
from bonect.daemon.models import ModelHolder
from bonect.daemon.sender import (
    STORED_STATUSES,
    DestinationNode,
    OnResult,
    RetryPolicy,
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


@dataclass(frozen=True)
class WorkerSettings:
    calling_ae: str
    destinations: Sequence[tuple[str, DestinationNode]]
    planes: Sequence[str]
    batch_size: int
    device: torch.device
    retry: RetryPolicy
    max_attempts: int
    timeouts: SendTimeouts


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
        )
        self.last_timings.add("convert", started)
        if self.metrics is not None:
            self.metrics.conversion_seconds.observe(self.last_timings.seconds["convert"])
        started = time.perf_counter()
        name, version, clinical = method_identity(method)
        out_dir = self.outgoing / job.series_uid / f"job{job.id}"
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a half-written output of a dead process
        paths = write_synthetic_ct(
            conversion.sct.array,
            series,
            out_dir,
            model_name=name,
            model_version=version,
            method="classical" if name == "classical" else "U-Net",
            clinical_use=clinical,
        )
        self.last_timings.add("write", started)
        now = self.clock()
        job = self.catalog.mark_converted(
            job, output_dir=out_dir, model_version=f"{name} {version}", now=now
        )
        names = [d for d, _ in self.settings.destinations]
        self.catalog.plan_sends(job, [(_sop_uid(p), p) for p in paths], names, now=now)
        logger.info("job %d: %d sCT instances written with %s", job.id, len(paths), method.label)
        return job

    def _send(self, job: JobRecord) -> None:
        started = time.perf_counter()
        pending = self.catalog.pending_sends(job)
        missing = 0
        for name, node in self.settings.destinations:
            mine = [s for s in pending if s.destination == name]
            if not mine:
                continue
            report = send_files(
                [s.path for s in mine],
                node,
                calling_ae=self.settings.calling_ae,
                timeouts=self.settings.timeouts,
                on_result=self._send_recorder(job, name),
            )
            missing += len(report.results) - len(report.stored)
        if missing and self.metrics is not None:
            self.metrics.send_failures.inc(missing)
        self.last_timings.add("send", started)
        if missing:
            raise SendIncomplete(f"{missing} instance(s) not yet stored")

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


def _sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(
        dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
    )
