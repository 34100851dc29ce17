"""Withdrawing a replaced sCT generation: its files leave the archive, PACS get a rejection note.

Once every instance of a later generation of a series is stored, each earlier generation is
withdrawn: its output folder is deleted, and each destination that may hold one of its
instances (one was sent there) gets an IHE IOCM rejection note (:mod:`bonect.daemon.rejection`)
unless it is configured not to; the note also rejects the generation's uncertainty object
(:mod:`bonect.converter.uncertainty_object`) where one was sent. Idempotent: each later
generation checks them all again, and finds the notes sent.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from bonect.catalog.queue import Catalog
from bonect.catalog.records import JobRecord
from bonect.catalog.tables import SendStatus
from bonect.converter.uncertainty_object import KINDS, SOP_CLASS, uncertainty_object_uids
from bonect.daemon.rejection import (
    Rejected,
    rejection_note,
    rejection_note_uids,
    write_rejection_note,
)
from bonect.daemon.sender import DestinationNode, SendOutcome, SendTimeouts, send_files
from bonect.errors import StorageError, storage_errors

logger = logging.getLogger(__name__)

_NOTE_STATUS = {SendOutcome.STORED: SendStatus.STORED, SendOutcome.FAILED: SendStatus.FAILED}


def uncertainty_objects(sct_series_uid: str) -> dict[str, Rejected]:
    """The uncertainty objects an sCT series may have had, by SOP Instance UID."""
    found = {}
    for kind in KINDS:
        series_uid, sop_instance_uid = uncertainty_object_uids(sct_series_uid, kind)
        found[sop_instance_uid] = Rejected(series_uid, SOP_CLASS[kind], sop_instance_uid)
    return found


@dataclass(frozen=True)
class Withdrawal:
    """Withdraws the earlier generations of a job's series over the catalog and the network."""

    catalog: Catalog
    outgoing: Path
    notes_to: Mapping[str, DestinationNode]  # destinations that take rejection notes
    no_notes: frozenset[str]  # destinations configured not to
    calling_ae: str
    timeouts: SendTimeouts
    clock: Callable[[], datetime]

    def withdraw(self, job: JobRecord, earlier: Sequence[JobRecord]) -> int:
        """Withdraw the ``earlier`` generations of ``job``; how many notes stay unanswered."""
        unanswered = 0
        for old in earlier:
            if old.output_dir is not None and old.output_dir.exists():
                shutil.rmtree(old.output_dir, ignore_errors=True)
                logger.info("job %d: deleted the output of job %d from the archive", job.id, old.id)
            unanswered += self._reject(job, old)
        return unanswered

    def _reject(self, job: JobRecord, old: JobRecord) -> int:
        """Plan and send the rejection note of ``old``'s series; how many stay unanswered."""
        if old.output_series_uid is None:
            return 0
        _, note_uid = rejection_note_uids(old.output_series_uid)
        sends = self.catalog.sends(old)
        derived = uncertainty_objects(old.output_series_uid)
        sent = {s.sop_instance_uid for s in sends if s.sop_instance_uid != note_uid}
        images = sorted(sent - set(derived))
        others = [derived[uid] for uid in sorted(sent & set(derived))]
        known = self.no_notes | set(self.notes_to)
        held = {
            s.destination
            for s in sends
            if s.sop_instance_uid != note_uid and s.attempts > 0 and s.destination in known
        }
        skipped = sorted(held & self.no_notes)
        if skipped:
            logger.info("job %d: no rejection note of job %d to %s", job.id, old.id, skipped)
        targets = sorted(held - self.no_notes)
        if not targets or not images:
            return 0
        path = self.outgoing / job.series_uid / "rejections" / f"job{old.id}.dcm"
        if not path.exists():
            note = self._note(job, old, images, others)
            with storage_errors(f"job {job.id}: writing the rejection note of job {old.id}"):
                write_rejection_note(path, note)
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
                self.notes_to[send.destination],
                calling_ae=self.calling_ae,
                timeouts=self.timeouts,
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
            self.catalog.record_send(
                old,
                note_uid,
                send.destination,
                status=_NOTE_STATUS.get(result.outcome, SendStatus.PENDING),
                now=self.clock(),
                status_code=result.status,
                error=result.error,
            )
            unanswered += result.outcome is SendOutcome.UNKNOWN
        return unanswered

    def _note(
        self, job: JobRecord, old: JobRecord, images: Sequence[str], others: Sequence[Rejected]
    ) -> Dataset:
        """The rejection note of ``old``'s sCT series and of its uncertainty object if one was
        sent (patient and study from the MR)."""
        instances = self.catalog.instances(job.series_uid)
        if not instances:
            raise StorageError(
                f"job {job.id}: series {job.series_uid}: no MR instance left to take the study from"
            )
        with storage_errors(f"job {job.id}: reading the MR header for a rejection note"):
            source = dcmread(instances[0].path, stop_before_pixels=True)
        description = (
            f"Synthetic CT version {old.generation} (series {old.output_series_uid}) was "
            f"computed before more images of MR series {job.series_uid} arrived; version "
            f"{job.generation} (series {job.output_series_uid}) replaces it."
        )
        return rejection_note(
            source, str(old.output_series_uid), images, description=description, others=others
        )
