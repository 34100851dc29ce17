"""The job queue: enqueue, claim, outcomes, orphans, operator retries, re-opened series."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonect.catalog import (
    Catalog,
    ClaimLost,
    IllegalTransition,
    JobState,
    Role,
    UnknownJob,
)
from bonect.errors import SeriesError
from catalog.catalog_support import FakeClock, header, receive, series_headers


def queued(catalog: Catalog, clock: FakeClock, series_uid: str, n: int = 3) -> int:
    receive(catalog, series_headers(n, series_uid), clock.now())
    return catalog.enqueue_job(series_uid, clock.now())


def test_claim_takes_the_oldest_job_once(catalog: Catalog, clock: FakeClock) -> None:
    first = queued(catalog, clock, "1.2.3.1")
    second = queued(catalog, clock, "1.2.3.2")
    job = catalog.claim_next(clock.now(), "w1")
    assert job is not None and job.id == first
    assert job.state is JobState.RUNNING and job.attempts == 1 and job.claimed_by == "w1"
    assert job.series_uid == "1.2.3.1" and job.study_uid == header().study_uid
    other = catalog.claim_next(clock.now(), "w2")
    assert other is not None and other.id == second
    assert catalog.claim_next(clock.now(), "w3") is None


def test_enqueue_twice_keeps_one_waiting_job(catalog: Catalog, clock: FakeClock) -> None:
    job_id = queued(catalog, clock, "1.2.3.1")
    assert catalog.enqueue_job("1.2.3.1", clock.now()) == job_id
    assert catalog.counts_by_state()[JobState.QUEUED] == 1


def test_enqueue_unknown_series_raises(catalog: Catalog, clock: FakeClock) -> None:
    with pytest.raises(SeriesError):
        catalog.enqueue_job("9.9.9", clock.now())


def test_full_life_of_a_job(catalog: Catalog, clock: FakeClock) -> None:
    queued(catalog, clock, "1.2.3.1")
    job = catalog.claim_next(clock.now(), "w1")
    assert job is not None
    job = catalog.mark_converted(
        job, output_dir=Path("/out/x"), model_version="m-1", now=clock.advance(10)
    )
    assert job.state is JobState.CONVERTED and job.output_dir == Path("/out/x")
    job = catalog.mark_sending(job, now=clock.advance(1))
    job = catalog.finish(job, now=clock.advance(1))
    assert job.state is JobState.DONE and job.finished_at == clock.now()
    assert job.model_version == "m-1"
    with pytest.raises(IllegalTransition):
        catalog.fail(job.id, "too late", now=clock.now())


def test_retry_later_waits_for_its_time(catalog: Catalog, clock: FakeClock) -> None:
    queued(catalog, clock, "1.2.3.1")
    job = catalog.claim_next(clock.now(), "w1")
    assert job is not None
    waiting = catalog.retry_later(
        job, at=clock.now().replace(minute=5), reason="PACS down", now=clock.now()
    )
    assert waiting.state is JobState.RETRY_WAIT and waiting.last_error == "PACS down"
    assert catalog.claim_next(clock.advance(60), "w1") is None
    again = catalog.claim_next(clock.advance(240), "w1")
    assert again is not None and again.id == job.id and again.attempts == 2


def test_fail_then_operator_retry(catalog: Catalog, clock: FakeClock) -> None:
    queued(catalog, clock, "1.2.3.1")
    queued(catalog, clock, "1.2.3.2")
    for _ in range(2):
        job = catalog.claim_next(clock.now(), "w1")
        assert job is not None
        catalog.fail(job, "missing slice 4", now=clock.now())
    failed = catalog.jobs(JobState.FAILED)
    assert [j.last_error for j in failed] == ["missing slice 4"] * 2
    assert [j.id for j in failed] == sorted((j.id for j in failed), reverse=True)  # newest first
    retried = catalog.retry(failed[0].id, now=clock.advance(1))
    assert retried.state is JobState.QUEUED and retried.attempts == 0
    assert catalog.retry_failed(now=clock.now()) == [failed[1].id]
    assert catalog.counts_by_state()[JobState.QUEUED] == 2
    with pytest.raises(IllegalTransition):
        catalog.retry(failed[0].id, now=clock.now())  # queued, not failed
    with pytest.raises(UnknownJob):
        catalog.retry(12345, now=clock.now())


def test_counts_by_state_lists_every_state(catalog: Catalog, clock: FakeClock) -> None:
    assert catalog.counts_by_state() == dict.fromkeys(JobState, 0)
    queued(catalog, clock, "1.2.3.1")
    queued(catalog, clock, "1.2.3.2")
    catalog.claim_next(clock.now(), "w1")
    counts = catalog.counts_by_state()
    assert counts[JobState.QUEUED] == 1 and counts[JobState.RUNNING] == 1
    assert sum(counts.values()) == 2


def test_oldest_waiting_since(catalog: Catalog, clock: FakeClock) -> None:
    assert catalog.oldest_waiting_since() is None
    start = clock.now()
    queued(catalog, clock, "1.2.3.1")
    clock.advance(30)
    queued(catalog, clock, "1.2.3.2")
    assert catalog.oldest_waiting_since() == start


def test_requeue_orphans(catalog: Catalog, clock: FakeClock) -> None:
    for uid in ("1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"):
        queued(catalog, clock, uid)
    running = catalog.claim_next(clock.now(), "hostA:1:w0")
    sending = catalog.claim_next(clock.now(), "hostA:1:w1")
    elsewhere = catalog.claim_next(clock.now(), "hostB:7:w0")
    assert running and sending and elsewhere
    converted = catalog.mark_converted(
        sending, output_dir=Path("/out/2"), model_version="m", now=clock.now()
    )
    catalog.mark_sending(converted, now=clock.now())
    # the process of hostA dies; on restart it requeues its own jobs only
    requeued = catalog.requeue_orphans(clock.advance(100), claimed_by_prefix="hostA:")
    assert sorted(requeued) == sorted([running.id, sending.id])
    resumed = catalog.job(sending.id)
    assert resumed is not None and resumed.state is JobState.QUEUED
    assert resumed.output_dir == Path("/out/2")  # sending resumes without converting again
    assert "requeued" in (resumed.last_error or "")
    still = catalog.job(elsewhere.id)
    assert still is not None and still.state is JobState.RUNNING
    # a single-host start takes every job in flight
    assert catalog.requeue_orphans(clock.now()) == [elsewhere.id]
    assert catalog.counts_by_state()[JobState.QUEUED] == 4


def test_a_worker_that_lost_its_job_cannot_report(catalog: Catalog, clock: FakeClock) -> None:
    queued(catalog, clock, "1.2.3.1")
    stale = catalog.claim_next(clock.now(), "w-old")
    assert stale is not None
    catalog.requeue_orphans(clock.advance(1))
    fresh = catalog.claim_next(clock.advance(1), "w-new")
    assert fresh is not None and fresh.id == stale.id
    with pytest.raises(ClaimLost):
        catalog.finish(stale, now=clock.now())
    assert catalog.finish(fresh, now=clock.now()).state is JobState.DONE


def test_reopened_series_is_queued_again(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(3), clock.now())
    (read,) = catalog.series_to_settle(clock.advance(61), quiet_seconds=60)
    first = catalog.settle_series(
        read.series_uid, revision=read.revision, role=Role.CONVERT, now=clock.now()
    )
    assert first is not None and first.job_id is not None
    job = catalog.claim_next(clock.now(), "w1")
    assert job is not None
    catalog.finish(job, now=clock.advance(5))
    receive(catalog, [header(index=3)], clock.advance(5))  # one more slice: re-opened
    (read,) = catalog.series_to_settle(clock.advance(61), quiet_seconds=60)
    second = catalog.settle_series(
        read.series_uid, revision=read.revision, role=Role.CONVERT, now=clock.now()
    )
    assert second is not None and second.job_id not in (None, first.job_id)
    again = catalog.claim_next(clock.now(), "w1")
    assert again is not None and again.id == second.job_id and again.generation == 2


def test_no_claim_while_the_same_series_is_in_flight(catalog: Catalog, clock: FakeClock) -> None:
    first = queued(catalog, clock, "1.2.3.1")
    job = catalog.claim_next(clock.now(), "w1")
    assert job is not None and job.id == first
    receive(catalog, [header("1.2.3.1", 7)], clock.advance(1))  # series grows meanwhile
    second = catalog.enqueue_job("1.2.3.1", clock.now())
    assert second != first
    assert catalog.claim_next(clock.now(), "w2") is None  # waits for the running one
    catalog.finish(job, now=clock.advance(1))
    follow_up = catalog.claim_next(clock.now(), "w2")
    assert follow_up is not None and follow_up.id == second


def test_reenqueue_resets_a_job_waiting_to_retry_that_wrote_nothing(
    catalog: Catalog, clock: FakeClock
) -> None:
    job_id = queued(catalog, clock, "1.2.3.1")
    job = catalog.claim_next(clock.now(), "w1")
    assert job is not None
    catalog.retry_later(job, at=clock.advance(3600), reason="disk full", now=clock.now())
    assert catalog.enqueue_job("1.2.3.1", clock.now()) == job_id
    reset = catalog.job(job_id)
    assert reset is not None and reset.state is JobState.QUEUED
    assert reset.output_dir is None and reset.not_before == clock.now()
    assert reset.generation == 1


def test_reenqueue_supersedes_a_job_waiting_to_retry_with_its_output(
    catalog: Catalog, clock: FakeClock
) -> None:
    """Its output may be half at the PACS: converting again under the same generation (the
    same UIDs) would leave those instances stale there, so a new generation replaces it."""
    job_id = queued(catalog, clock, "1.2.3.1")
    job = catalog.claim_next(clock.now(), "w1")
    assert job is not None
    job = catalog.mark_converted(
        job, output_dir=Path("/o"), model_version="m", now=clock.now(), output_series_uid="1.9"
    )
    catalog.retry_later(job, at=clock.advance(3600), reason="PACS down", now=clock.now())
    new_id = catalog.enqueue_job("1.2.3.1", clock.now())
    assert new_id != job_id
    old, new = catalog.job(job_id), catalog.job(new_id)
    assert old is not None and new is not None
    assert old.state is JobState.SUPERSEDED and old.output_series_uid == "1.9"
    assert old.last_error == f"superseded by job {new_id} (generation 2)"
    assert (new.state, new.generation, new.not_before) == (JobState.QUEUED, 2, clock.now())
    claimed = catalog.claim_next(clock.advance(7200), "w1")  # the old one never again
    assert claimed is not None and claimed.id == new_id
    assert catalog.claim_next(clock.now(), "w2") is None
    assert [j.id for j in catalog.earlier_jobs(claimed)] == [job_id]
