"""Prefetch of priors: for each settled bone-MR series, find its patient's CT at each source.

:func:`run_priors_once` is one step, driven with the time passed in: it creates the missing
"find priors" tasks (one per settled ``convert`` series and ``[[sources]]`` entry), claims the
next due one, and runs it to its end or its next wait:

1. outside the source's ``allowed_hours`` it waits (no association is opened) until they open;
2. search: study-level C-FIND by PatientID (+ IssuerOfPatientID), StudyDate within
   ``[trainer] pair_window_days`` of the MR's, ModalitiesInStudy CT; then series-level C-FIND
   of each study, keeping the series the ``[rules.keep_ct]`` rule accepts that are neither in
   the archive already nor bonect's own synthetic CT; nothing kept: ``none_found``, with the
   reason (how many CT studies lay outside the window, how many series the rules refused);
3. retrieve: C-MOVE (to ``move_destination_ae``, our Storage SCP) or C-GET (on the same
   association, through the one receive path) of exactly those series, one at a time, paced
   by ``max_instances_per_second``; every series retrieved: ``done``. A C-GET's instances are
   held to the Storage SCP's limits (:class:`GetReceiver`): streamed to files, refused over
   ``[storage] max_dataset_mb`` (0xA700), the association aborted past twice that, the file of
   an instance cut short removed, and a C-GET that did not end in a release is an aborted
   association for settle.

A retryable failure (:class:`~bonect.dicom.query_retrieve.SourceUnavailable`) puts the task
off with exponential backoff (the ``[sender]`` retry settings) up to ``MAX_ATTEMPTS``; a
permanent one fails it. A series whose retrieval was interrupted stays ``pending`` and is asked
for again on the next attempt (the archive keeps one copy of each SOP Instance UID).

:func:`run_priors_loop` repeats the step in its own thread (:func:`start_priors_thread`), so
nothing here ever holds up the receive of live series. (Over 400 lines: to split into
search / retrieve / loop modules once harvest reuses the search.)
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Protocol, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from sqlalchemy import select

from bonect.audit import AuditEvent, AuditTrail, Participant, Subject
from bonect.catalog import priors as store
from bonect.catalog.priors import PriorState, RetrievalState, WantedSeries
from bonect.catalog.queue import Catalog
from bonect.catalog.tables import Job
from bonect.config import Config, SourceConfig
from bonect.daemon.incoming import DatasetGuard, received_payload, stream_received_datasets
from bonect.daemon.receive import OUT_OF_RESOURCES, Receiver
from bonect.daemon.sender import RetryPolicy
from bonect.dicom.query_retrieve import (
    QueryRetrieveClient,
    QueryRetrieveError,
    RetrieveResult,
    SourceUnavailable,
    StoreHandler,
    wake_waiting_request,
)
from bonect.prior_search import SearchClient, search_prior_cts, study_day

if TYPE_CHECKING:
    from bonect.daemon.node import Node

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20
"""Failed attempts (source down, timeouts) after which a task fails for an operator to see."""

IDLE_SECONDS = 2.0
"""How long the loop waits when no task is due."""


class PriorsClient(SearchClient, Protocol):
    """What a step needs of a source (:class:`QueryRetrieveClient`; a fake in unit tests): the
    searches of :class:`~bonect.prior_search.SearchClient`, and retrieval."""

    def move_series(self, study_uid: str, series_uid: str, *, move_ae: str) -> RetrieveResult: ...

    def get_series(
        self,
        study_uid: str,
        series_uid: str,
        *,
        on_store: StoreHandler,
        handlers: Sequence[EventHandlerType] = (),
    ) -> RetrieveResult: ...


ClientFor = Callable[[SourceConfig], PriorsClient]


@dataclass(frozen=True)
class PriorStep:
    """What one step did with one task."""

    task_id: int
    state: PriorState
    reason: str | None
    retrieved: tuple[str, ...] = ()  # series UIDs


# -- allowed hours -----------------------------------------------------------------------------


def in_allowed_hours(hours: tuple[int, int] | None, local: datetime) -> bool:
    """Whether ``local`` (a local time) falls in the window (start, end) in minutes of the day."""
    if hours is None:
        return True
    start, end = hours
    minute = local.hour * 60 + local.minute
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps past midnight


def next_opening(hours: tuple[int, int], now: datetime, tz: tzinfo | None) -> datetime:
    """The next time (aware UTC) the window opens after ``now``."""
    local = now.astimezone(tz)
    opening = local.replace(hour=hours[0] // 60, minute=hours[0] % 60, second=0, microsecond=0)
    if opening <= local:
        opening += timedelta(days=1)
    return opening.astimezone(UTC)


# -- C-GET: instances through the one receive path ----------------------------------------------


class GetReceiver:
    """The handlers of one C-GET association: the node's receive path (one id per get) under
    the Storage SCP's limits.

    As on the SCP (:mod:`bonect.daemon.incoming`): each data set streams to a file (pynetdicom's
    process-wide switch, turned on here too), one over ``max_dataset_bytes`` is refused 0xA700
    by the receive path, the :class:`~bonect.daemon.incoming.DatasetGuard` aborts the
    association once a data set passes twice that and removes the file of a data set cut short
    when the connection closes."""

    def __init__(self, receiver: Receiver, source: str) -> None:
        self._receiver = receiver
        self._source = source
        self.association_id = f"get:{uuid.uuid4().hex}"
        self.too_large: str | None = None  # why the guard aborted the association, if it did
        self._woken = False
        self._guard = DatasetGuard(2 * receiver.max_dataset_bytes, on_abort=self._on_too_large)
        stream_received_datasets()

    @property
    def handlers(self) -> list[EventHandlerType]:
        """The guard's pynetdicom event handlers, to bind to the C-GET association."""
        return [
            (evt.EVT_PDU_RECV, self._on_pdu_recv),
            (evt.EVT_CONN_CLOSE, self._guard.on_conn_close),
        ]

    def _on_pdu_recv(self, event: Event) -> None:
        """The guard's count; once it aborted, wake the C-GET waiting for its next response
        (else it would wait out the DIMSE timeout, see :func:`wake_waiting_request`)."""
        self._guard.on_pdu_recv(event)
        if self.too_large is not None and not self._woken:
            self._woken = True
            wake_waiting_request(event.assoc)

    def _on_too_large(self, assoc: Association, received: int) -> None:
        del assoc
        self.too_large = (
            f"a data set passed {received / 2**20:.0f} MB, twice storage.max_dataset_mb: "
            "association aborted"
        )
        logger.warning("C-GET from %s: %s", self._source, self.too_large)

    def on_store(self, event: Event) -> int:
        try:
            request = cast(C_STORE, event.request)
            payload = received_payload(event)  # streamed to a file in the daemon
            receipt = self._receiver.receive(
                payload.dataset,
                payload.encoded,
                association_id=self.association_id,
                size=payload.size,
                transfer_syntax_uid=event.context.transfer_syntax,
                calling_ae=None,
                peer_address=event.assoc.acceptor.address,
                request_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                request_sop_class_uid=str(request.AffectedSOPClassUID or ""),
            )
        except Exception:  # a status for the source, never an exception
            logger.exception("unexpected failure storing an instance from source %s", self._source)
            return OUT_OF_RESOURCES
        if not receipt.ok:
            logger.warning(
                "C-GET from %s: 0x%04X, %s", self._source, receipt.status, receipt.reason
            )
        return receipt.status

    def ended(self, *, aborted: bool) -> None:
        """The C-GET association ended: released (settle may complete its series), or
        ``aborted`` (an A-ABORT, the connection lost, a failure: the series may be cut short)."""
        self._receiver.association_ended(self.association_id, aborted=aborted)


# -- the step ----------------------------------------------------------------------------------


def _output_series(catalog: Catalog, series_uids: list[str]) -> set[str]:
    if not series_uids:
        return set()
    with catalog.reading() as session:
        return {
            str(uid)
            for uid in session.scalars(
                select(Job.output_series_uid).where(Job.output_series_uid.in_(series_uids))
            )
        }


def ensure_tasks(catalog: Catalog, config: Config, now: datetime) -> list[int]:
    """Create the task of every settled bone-MR series that lacks one, per source; their ids."""
    created = []
    for source in config.sources:
        for series_uid in store.series_without_tasks(catalog, source.name):
            created.append(store.create_task(catalog, series_uid, source.name, now))
    return created


def _search(
    catalog: Catalog,
    config: Config,
    task: store.PriorTaskRecord,
    client: PriorsClient,
    now: datetime,
) -> tuple[list[WantedSeries], str]:
    """The series to retrieve, and why there are none when so. Raises QueryRetrieveError."""
    mr = store.mr_patient(catalog, task.mr_series_uid)
    if mr is None or not mr.patient_id.strip():
        return [], "the MR series has no PatientID to search by"
    found = search_prior_cts(
        client,
        config.rules,
        patient_id=mr.patient_id,
        issuer_of_patient_id=mr.issuer_of_patient_id,
        mr_day=study_day(mr.study_date, now.date()),  # undated: the day it arrived
        window_days=config.trainer.pair_window_days,
    )
    if not found.candidates:
        return [], found.reason
    uids = [s.series_uid for _, s in found.candidates]
    present = store.series_in_archive(catalog, uids) | _output_series(catalog, uids)
    wanted = [
        WantedSeries(
            study_uid=study.study_uid,
            series_uid=series.series_uid,
            study_date=study.study_date,
            series_description=series.series_description,
            expected_instances=series.instances,
        )
        for study, series in found.candidates
        if series.series_uid not in present
    ]
    if wanted:
        return wanted, ""
    return [], f"{len(found.candidates)} CT series found, all already in the archive"


def _retrieve(
    catalog: Catalog,
    config: Config,
    source: SourceConfig,
    task: store.PriorTaskRecord,
    client: PriorsClient,
    now: datetime,
    *,
    receiver: Receiver | None,
    wait: Callable[[float], object],
    audit: AuditTrail | None = None,
) -> list[str]:
    """Retrieve the task's pending series; the UIDs retrieved. Raises QueryRetrieveError."""
    move_ae = source.move_destination_ae or config.node.ae_title
    retrieved = []
    for row in store.retrievals(catalog, task.id):
        if row.state is not RetrievalState.PENDING:
            continue
        if source.retrieve == "move":
            result = client.move_series(row.study_uid, row.series_uid, move_ae=move_ae)
        else:
            if receiver is None:
                raise RuntimeError("C-GET needs the node's receive path")
            get = GetReceiver(receiver, source.name)
            aborted = True
            try:
                result = client.get_series(
                    row.study_uid, row.series_uid, on_store=get.on_store, handlers=get.handlers
                )
                aborted = False
            except SourceUnavailable as exc:
                if get.too_large is None:
                    raise
                raise SourceUnavailable(
                    f"C-GET of {row.series_uid}: {get.too_large}", source=source.name
                ) from exc
            finally:
                get.ended(aborted=aborted)
        if result.failed or result.completed == 0:
            reason = f"{result.completed} instances stored, {result.failed} failed"
            store.record_retrieval(
                catalog,
                row.id,
                RetrievalState.PENDING,
                now,
                completed=result.completed,
                failed=result.failed,
                reason=reason,
            )
            raise _Incomplete(f"series {row.series_uid}: {reason}")
        store.record_retrieval(
            catalog, row.id, RetrievalState.RETRIEVED, now, completed=result.completed
        )
        retrieved.append(row.series_uid)
        if audit is not None:
            audit.record(
                AuditEvent.PRIOR_RETRIEVED,
                participants=[
                    Participant(config.node.ae_title, requestor=True),
                    Participant(
                        source.ae_title, requestor=False, address=f"{source.host}:{source.port}"
                    ),
                ],
                subject=Subject(None, row.study_uid, row.series_uid, result.completed),
                detail={"source": source.name, "for_mr_series": task.mr_series_uid},
            )
        logger.info(
            "prior task %d: CT series %s retrieved from %s (%d instances)",
            task.id,
            row.series_uid,
            source.name,
            result.completed,
        )
        if source.max_instances_per_second > 0:
            wait(result.completed / source.max_instances_per_second)
    return retrieved


class _Incomplete(Exception):
    """Some sub-operations of a retrieval failed: try the series again later."""


def run_priors_once(
    catalog: Catalog,
    config: Config,
    now: datetime,
    *,
    worker: str = "priors",
    client_for: ClientFor | None = None,
    receiver: Receiver | None = None,
    tz: tzinfo | None = None,
    wait: Callable[[float], object] | None = None,
    audit: AuditTrail | None = None,
) -> PriorStep | None:
    """Run the next due "find priors" task at ``now``; None when none is due.

    ``client_for`` builds the SCU of a source (default :class:`QueryRetrieveClient`),
    ``receiver`` archives the instances of a C-GET, ``tz`` is the zone of ``allowed_hours``
    (None: the machine's), ``wait(seconds)`` paces a retrieval (default: no pause).
    """
    ensure_tasks(catalog, config, now)
    task = store.claim_next(catalog, now, worker)
    if task is None:
        return None
    source = next((s for s in config.sources if s.name == task.source), None)
    if source is None:
        reason = f"source {task.source!r} is no longer configured"
        store.finish(catalog, task.id, PriorState.FAILED, now, reason)
        return PriorStep(task.id, PriorState.FAILED, reason)
    hours = source.hours
    if hours is not None and not in_allowed_hours(hours, now.astimezone(tz)):
        reason = f"outside the allowed hours {source.allowed_hours} of source {source.name}"
        store.wait_until(
            catalog, task.id, next_opening(hours, now, tz), reason, now, failed_attempt=False
        )
        return PriorStep(task.id, PriorState.WAITING, reason)
    if client_for is None:
        calling_ae = config.node.ae_title
        client: PriorsClient = QueryRetrieveClient(source, calling_ae=calling_ae)
    else:
        client = client_for(source)
    try:
        if not store.retrievals(catalog, task.id):
            wanted, why = _search(catalog, config, task, client, now)
            if not wanted:
                store.finish(catalog, task.id, PriorState.NONE_FOUND, now, why)
                logger.info("prior task %d: none found (%s)", task.id, why)
                return PriorStep(task.id, PriorState.NONE_FOUND, why)
            store.want_series(catalog, task, wanted, now)
        store.set_retrieving(catalog, task.id, now)
        retrieved = _retrieve(
            catalog,
            config,
            source,
            task,
            client,
            now,
            receiver=receiver,
            wait=wait or _no_wait,
            audit=audit,
        )
    except (QueryRetrieveError, _Incomplete, OSError) as exc:
        permanent = isinstance(exc, QueryRetrieveError) and not exc.retryable
        return _failed(catalog, task, str(exc), now, config, permanent=permanent)
    except Exception as exc:  # a bug or the catalog: logged, retried with backoff
        logger.exception("prior task %d failed unexpectedly", task.id)
        return _failed(catalog, task, f"unexpected: {exc!r}", now, config, permanent=False)
    reason = f"{len(retrieved)} CT series retrieved" if retrieved else "nothing left to retrieve"
    store.finish(catalog, task.id, PriorState.DONE, now, reason)
    return PriorStep(task.id, PriorState.DONE, reason, tuple(retrieved))


def _no_wait(seconds: float) -> None:
    del seconds


def _failed(
    catalog: Catalog,
    task: store.PriorTaskRecord,
    reason: str,
    now: datetime,
    config: Config,
    *,
    permanent: bool,
) -> PriorStep:
    attempts = task.attempts + 1
    if permanent or attempts >= MAX_ATTEMPTS:
        if not permanent:
            reason = f"{reason} (gave up after {attempts} attempts)"
        store.finish(catalog, task.id, PriorState.FAILED, now, reason)
        logger.warning("prior task %d failed: %s", task.id, reason)
        return PriorStep(task.id, PriorState.FAILED, reason)
    sender = config.sender
    policy = RetryPolicy(
        initial_seconds=sender.retry_initial_seconds, cap_seconds=sender.retry_max_seconds
    )
    at = now + policy.delay(attempts)
    store.wait_until(catalog, task.id, at, reason, now, failed_attempt=True)
    logger.warning("prior task %d: %s; retry %d at %s", task.id, reason, attempts, at)
    return PriorStep(task.id, PriorState.WAITING, reason)


# -- the thread --------------------------------------------------------------------------------


def run_priors_loop(
    catalog: Catalog,
    config: Config,
    stop: threading.Event,
    *,
    clock: Callable[[], datetime],
    receiver: Receiver | None,
    idle_seconds: float = IDLE_SECONDS,
    audit: AuditTrail | None = None,
) -> None:
    """Step until ``stop`` is set; interrupted tasks of an earlier process are resumed first."""
    requeued = store.requeue_interrupted(catalog, clock())
    if requeued:
        logger.warning("prior tasks interrupted by a stop resumed: %s", requeued)
    while not stop.is_set():
        try:
            step = run_priors_once(
                catalog, config, clock(), receiver=receiver, wait=stop.wait, audit=audit
            )
        except Exception:  # the catalog is unavailable: try again after a pause
            logger.exception("prior search step failed")
            step = None
        if step is None:
            stop.wait(idle_seconds)


def start_priors_thread(node: Node, stop: threading.Event) -> threading.Thread | None:
    """Start :func:`run_priors_loop` for a node with ``[[sources]]``; None when there are none."""
    if not node.config.sources:
        return None
    from bonect.daemon.node import CatalogSink

    receiver = Receiver(
        archive=node.archive,
        sink=CatalogSink(node.catalog, node.wake, node.metrics),
        reserve_bytes=node.config.storage.reserve_mb * 1024 * 1024,
        max_dataset_bytes=node.config.storage.max_dataset_mb * 1024 * 1024,
        clock=node.clock,
    )
    thread = threading.Thread(
        target=run_priors_loop,
        args=(node.catalog, node.config, stop),
        kwargs={"clock": node.clock, "receiver": receiver, "audit": node.audit},
        name="bonect-priors",
        daemon=True,
    )
    thread.start()
    logger.info("prior search started for %d source(s)", len(node.config.sources))
    return thread
