"""Keeping a claimed job's lease: a heartbeat thread that renews it while the worker holds it.

A worker claims a job with a lease (``[catalog] lease_seconds``); another worker takes the job
over once the lease has ended (:func:`bonect.catalog.lifecycle.expire_leases`). So while the
worker converts and sends, :class:`LeaseKeeper` renews the lease every third of its length on a
thread of its own (a conversion step may take minutes and holds no hook to renew from), and the
worker renews it once more at each stage boundary (:meth:`LeaseKeeper.renew`) before it writes
or sends anything: a worker that was cut off from the catalog for longer than a lease learns
there that its job is no longer its own (:class:`~bonect.catalog.lifecycle.ClaimLost`) and
stops, before it touches the output folder its job's new holder writes.

A renewal the catalog cannot take (it does not answer) is logged and tried again at the next
beat: if that goes on for a whole lease, the job is rightly taken over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from bonect.catalog.queue import Catalog, ClaimLost
from bonect.catalog.records import JobRecord

logger = logging.getLogger(__name__)

BEATS_PER_LEASE = 3
"""Renewals per lease: two may be missed (a busy machine, a catalog that hiccups) safely."""


class LeaseKeeper:
    """Renews the lease of one claimed job until :meth:`stop`; build it with :meth:`start`."""

    def __init__(
        self,
        catalog: Catalog,
        job: JobRecord,
        *,
        lease: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self.catalog = catalog
        self.job = job  # the claim: id, claimed_by, claimed_at
        self.lease = lease
        self.clock = clock
        self.lost: ClaimLost | None = None  # set once a renewal found the job taken
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-job{job.id}", daemon=True)

    @classmethod
    def start(
        cls,
        catalog: Catalog,
        job: JobRecord,
        *,
        lease: timedelta,
        clock: Callable[[], datetime],
    ) -> LeaseKeeper:
        """Renew ``job``'s lease from now on, every :data:`BEATS_PER_LEASE`-th of ``lease``."""
        keeper = cls(catalog, job, lease=lease, clock=clock)
        keeper._thread.start()
        return keeper

    def renew(self) -> None:
        """Renew now (at a stage boundary); raises :class:`ClaimLost` if the job was taken."""
        if self.lost is not None:
            raise self.lost
        try:
            self.catalog.renew_lease(self.job, now=self.clock(), lease=self.lease)
        except ClaimLost as exc:
            self.lost = exc
            raise

    def _beat(self) -> None:
        interval = self.lease.total_seconds() / BEATS_PER_LEASE
        while not self._stop.wait(timeout=interval):
            try:
                self.renew()
            except ClaimLost as exc:
                if not self._stop.is_set():  # else the job just ended: nothing to hold
                    logger.warning(
                        "job %d: %s; the worker stops at its next stage", self.job.id, exc
                    )
                return
            except Exception as exc:  # the catalog did not answer: try again at the next beat
                logger.warning("job %d: lease not renewed, will try again: %s", self.job.id, exc)

    def stop(self) -> None:
        """Stop renewing (the job's outcome is about to be recorded).

        Waits for a renewal under way, at most one lease: one stuck on an unreachable
        database is left to finish on its own (the thread is a daemon thread).
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.lease.total_seconds())
