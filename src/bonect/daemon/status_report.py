"""What ``bonect-daemon status`` and ``bonect-daemon jobs`` print, from the catalog's records.

Plain functions over :class:`~bonect.catalog.queue.Catalog` methods, returning lines of text;
:mod:`bonect.daemon.cli` prints them. Times are shown in the local time zone.
"""

from __future__ import annotations

from datetime import datetime

from bonect.catalog import Catalog, JobState, SendStatus, SettleState, peer_checks
from bonect.catalog import priors as prior_store
from bonect.catalog.priors import PriorState
from bonect.catalog.records import UncertaintySummary


def _local(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def status_lines(catalog: Catalog, now: datetime, *, model: str) -> list[str]:
    """What ``bonect-daemon status`` prints: queue, model, timings of the last job, errors.

    ``model`` is the line that says which method converts (see
    :func:`bonect.daemon.cli.model_summary`).
    """
    counts = catalog.counts_by_state()
    lines = ["jobs: " + ", ".join(f"{state.value} {n}" for state, n in counts.items())]
    receiving = len(catalog.list_series(settle_state=SettleState.OPEN))
    oldest = catalog.oldest_waiting_since()
    age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
    waiting = "" if oldest is None else f", oldest waiting job {age:.0f} s"
    lines.append(f"series being received: {receiving}{waiting}")
    lines.append(f"model: {model}")
    last = catalog.last_done_timeline()
    if last is not None:
        used = f", {last.model_version}" if last.model_version else ""
        retried = f", {last.attempts} attempts" if last.attempts > 1 else ""
        lines.append(
            f"last done: job {last.job_id} (series {last.series_uid}{used}{retried}), "
            f"generation {last.generation}"
        )
        lines.append("  " + ", ".join(f"{name} {s:.1f} s" for name, s in last.stages()))
        if last.uncertainty is not None:
            lines.append(f"  uncertainty: {last.uncertainty.text()}")
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
    for check in sorted(peer_checks.last_checks(catalog).values(), key=lambda c: c.name):
        if not check.ok:
            errors.append(
                f"  {check.kind} {check.name}: C-ECHO {_local(check.checked_at)}: {check.message}"
            )
    lines.append("last errors:" if errors else "last errors: none")
    lines.extend(errors)
    lines.extend(prior_summary_lines(catalog))
    return lines


def _by_state(counts: dict[PriorState, int] | dict[prior_store.RetrievalState, int]) -> str:
    return ", ".join(f"{state.value} {n}" for state, n in sorted(counts.items()))


def prior_summary_lines(catalog: Catalog) -> list[str]:
    """Prior searches and retrievals by state, and the latest that need an eye; none without
    ``[[sources]]`` (no task was ever made)."""
    counts = prior_store.counts(catalog)
    if not counts.tasks:
        return []
    lines = [f"prior searches: {_by_state(counts.tasks)}"]
    if counts.retrievals:
        lines.append(
            f"prior retrievals: {_by_state(counts.retrievals)} "
            f"({counts.instances_retrieved} instances)"
        )
    for state in (PriorState.FAILED, PriorState.WAITING):
        for task in prior_store.recent_tasks(catalog, limit=3, state=state):
            lines.append(f"  prior search {task.id} ({task.source}) {state.value}: {task.reason}")
    return lines


def prior_lines(catalog: Catalog, state: str | None, limit: int) -> list[str]:
    """One line per prior search, newest first (id, state, source, MR series, attempts,
    reason), then one indented line per CT series it wanted."""
    tasks = prior_store.recent_tasks(
        catalog, limit=limit, state=PriorState(state) if state else None
    )
    lines = []
    for task in tasks:
        reason = f"  {task.reason}" if task.reason else ""
        lines.append(
            f"{task.id:6d}  {task.state.value:10s}  {task.source}  attempts {task.attempts}  "
            f"MR {task.mr_series_uid}{reason}"
        )
        for r in prior_store.retrievals(catalog, task.id):
            expected = "?" if r.expected_instances is None else str(r.expected_instances)
            why = f"  {r.reason}" if r.reason else ""
            lines.append(
                f"        CT {r.series_uid} ({r.study_date or 'undated'}, "
                f"{r.series_description or 'no description'}): {r.state.value}, "
                f"{r.completed}/{expected} instances{why}"
            )
    return lines


def _share(summary: UncertaintySummary) -> str:
    """``3.2 % > 100 HU``: the share of the head whose planes disagree by more."""
    return f"{100 * summary.share:.1f} % > {summary.threshold_hu:g} HU"


def job_lines(catalog: Catalog, state: str | None, limit: int) -> list[str]:
    """One line per job, newest first: id, state, last change, generation, attempts, series,
    the share of the head whose planes disagree (when recorded), reason; a done job whose
    series was converted again since says which generation replaced it."""
    jobs = catalog.jobs(JobState(state) if state else None, limit=limit)
    newest = catalog.newest_done_generations({job.series_uid for job in jobs})
    lines = []
    for job in jobs:
        reason = f"  {job.last_error}" if job.last_error else ""
        if job.uncertainty is not None:
            reason = f"  unsure {_share(job.uncertainty)}{reason}"
        if job.state == JobState.DONE and newest.get(job.series_uid, 0) > job.generation:
            reason = f"  replaced by generation {newest[job.series_uid]}{reason}"
        lines.append(
            f"{job.id:6d}  {job.state.value:10s}  {_local(job.updated_at)}  "
            f"gen {job.generation}  attempts {job.attempts}  {job.series_uid}{reason}"
        )
    return lines
