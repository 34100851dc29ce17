"""What each host of a node runs (``bonect-daemon start --role``), and a worker host's restart.

A node is one host (``all``) or several on one PostgreSQL catalog and a shared archive:
``receiver`` hosts own the DICOM port, the drop folder, prior searches, settling, queueing and
housekeeping; ``worker`` hosts convert and send. Several worker processes may run on one host
(one per GPU), so a starting process requeues only the jobs of this host's processes that are
gone (:func:`requeue_own_orphans`); a job of a live one, or of another host, is left to its
lease (:mod:`bonect.daemon.lease`).
"""

from __future__ import annotations

import os
from datetime import datetime
from enum import StrEnum

from bonect.catalog.queue import Catalog


class NodeRole(StrEnum):
    """What this host runs of the node (``bonect-daemon start --role``)."""

    ALL = "all"  # everything: the one host of a node
    RECEIVER = "receiver"  # the DICOM port, drop folder, priors, settling and queueing
    WORKER = "worker"  # conversion and sending only: no DICOM port

    @property
    def receives(self) -> bool:
        return self is not NodeRole.WORKER

    @property
    def converts(self) -> bool:
        return self is not NodeRole.RECEIVER


def holder_alive(holder: str, host_prefix: str) -> bool:
    """Whether the worker ``holder`` (``host:pid:n``) of this host may still be running.

    A pid that is not there means a stopped process; one that is (maybe another worker
    process of this host, maybe a reused pid) is left to the lease to judge.
    """
    try:
        pid = int(holder.removeprefix(host_prefix).split(":", 1)[0])
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def requeue_own_orphans(catalog: Catalog, now: datetime, host_prefix: str) -> list[int]:
    """Queue again the jobs that stopped worker processes of this host left in flight."""
    requeued: list[int] = []
    for holder in sorted(catalog.holders_in_flight(host_prefix)):
        if not holder_alive(holder, host_prefix):
            requeued.extend(catalog.requeue_orphans(now, claimed_by=holder))
    return requeued
