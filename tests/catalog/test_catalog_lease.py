"""Leases on claimed jobs: renewed by their holder, taken over by another worker once ended.

On SQLite and PostgreSQL alike (conftest.py); time is the fake clock's. A job's lease ends
``lease`` after its claim or last renewal; the next claim by any worker then queues it again
and takes it, keeping its place in the queue, and every later report of the old holder raises
:class:`ClaimLost`.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from bonect.catalog import Catalog, ClaimLost, JobState
from catalog.catalog_support import FakeClock, receive, series_headers

LEASE = timedelta(seconds=30)


def queued(catalog: Catalog, clock: FakeClock, series_uid: str) -> int:
    receive(catalog, series_headers(3, series_uid), clock.now())
    return catalog.enqueue_job(series_uid, clock.now())


def test_a_claim_with_a_lease_ends_at_now_plus_the_lease(
    catalog: Catalog, clock: FakeClock
) -> None:
    queued(catalog, clock, "1.2.3.1")
    queued(catalog, clock, "1.2.3.2")
    leased = catalog.claim_next(clock.now(), "w1", lease=LEASE)
    assert leased is not None and leased.lease_until == clock.now() + LEASE
    unleased = catalog.claim_next(clock.now(), "w2")
    assert unleased is not None and unleased.lease_until is None
    done = catalog.finish(leased, now=clock.now())
    assert done.lease_until is None  # out of flight: no lease


def test_a_job_is_taken_over_only_once_its_lease_has_ended(
    catalog: Catalog, clock: FakeClock
) -> None:
    job_id = queued(catalog, clock, "1.2.3.1")
    held = catalog.claim_next(clock.now(), "hostA:1:0", lease=LEASE)
    assert held is not None and held.id == job_id
    assert catalog.claim_next(clock.advance(29), "hostB:2:0", lease=LEASE) is None
    taken = catalog.claim_next(clock.advance(2), "hostB:2:0", lease=LEASE)
    assert taken is not None and taken.id == job_id
    assert taken.claimed_by == "hostB:2:0" and taken.attempts == 2
    assert taken.lease_until == clock.now() + LEASE
    assert "lease of hostA:1:0 ended" in (taken.last_error or "")
    # the old holder learns it at its next report or renewal, whatever it is
    with pytest.raises(ClaimLost):
        catalog.renew_lease(held, now=clock.now(), lease=LEASE)
    with pytest.raises(ClaimLost):
        catalog.mark_converted(held, output_dir=Path("/out"), model_version="m", now=clock.now())
    with pytest.raises(ClaimLost):
        catalog.fail(held, "late", now=clock.now())
    with pytest.raises(ClaimLost):
        catalog.finish(held, now=clock.now())
    assert catalog.finish(taken, now=clock.now()).state is JobState.DONE


def test_renewing_keeps_the_job(catalog: Catalog, clock: FakeClock) -> None:
    queued(catalog, clock, "1.2.3.1")
    held = catalog.claim_next(clock.now(), "w1", lease=LEASE)
    assert held is not None
    for _ in range(5):  # 100 s in all, renewed every 20 s
        until = catalog.renew_lease(held, now=clock.advance(20), lease=LEASE)
        assert until == clock.now() + LEASE
        assert catalog.claim_next(clock.now(), "w2", lease=LEASE) is None
    renewed = catalog.job(held.id)
    assert renewed is not None and renewed.lease_until == until
    assert catalog.claim_next(clock.advance(31), "w2", lease=LEASE) is not None


def test_a_holder_may_renew_an_ended_lease_nobody_took(catalog: Catalog, clock: FakeClock) -> None:
    queued(catalog, clock, "1.2.3.1")
    held = catalog.claim_next(clock.now(), "w1", lease=LEASE)
    assert held is not None
    catalog.renew_lease(held, now=clock.advance(45), lease=LEASE)  # late, but still its own
    assert catalog.claim_next(clock.advance(1), "w2", lease=LEASE) is None
    assert catalog.finish(held, now=clock.now()).state is JobState.DONE


def test_a_job_taken_over_mid_send_resumes_its_sends(catalog: Catalog, clock: FakeClock) -> None:
    queued(catalog, clock, "1.2.3.1")
    held = catalog.claim_next(clock.now(), "w1", lease=LEASE)
    assert held is not None
    converted = catalog.mark_converted(
        held, output_dir=Path("/out/1"), model_version="m", now=clock.now()
    )
    catalog.plan_sends(converted, [("1.9.1", Path("/out/1/a.dcm"))], ["pacs"], now=clock.now())
    sending = catalog.mark_sending(converted, now=clock.now())
    taken = catalog.claim_next(clock.advance(31), "w2", lease=LEASE)
    assert taken is not None and taken.id == held.id
    assert taken.state is JobState.RUNNING
    assert taken.output_dir == Path("/out/1")  # no new conversion: send what is pending
    assert [s.sop_instance_uid for s in catalog.pending_sends(taken)] == ["1.9.1"]
    with pytest.raises(ClaimLost):
        catalog.finish(sending, now=clock.now())


def test_a_taken_over_job_keeps_its_place_in_the_queue(catalog: Catalog, clock: FakeClock) -> None:
    first = queued(catalog, clock, "1.2.3.1")
    assert catalog.claim_next(clock.now(), "dead", lease=LEASE) is not None
    clock.advance(10)
    later = queued(catalog, clock, "1.2.3.2")
    taken = catalog.claim_next(clock.advance(21), "w2", lease=LEASE)
    assert taken is not None and taken.id == first  # before the one queued after it
    nxt = catalog.claim_next(clock.now(), "w2", lease=LEASE)
    assert nxt is not None and nxt.id == later


def test_a_claim_without_a_lease_is_never_taken_over(catalog: Catalog, clock: FakeClock) -> None:
    queued(catalog, clock, "1.2.3.1")
    assert catalog.claim_next(clock.now(), "w1") is not None
    assert catalog.claim_next(clock.advance(86400), "w2", lease=LEASE) is None


def test_a_requeued_job_refuses_its_old_holders_report(catalog: Catalog, clock: FakeClock) -> None:
    queued(catalog, clock, "1.2.3.1")
    held = catalog.claim_next(clock.now(), "w1", lease=LEASE)
    assert held is not None
    assert catalog.requeue_orphans(clock.advance(1), claimed_by="w1") == [held.id]
    with pytest.raises(ClaimLost):  # queued, not claimed by anyone yet: still not w1's
        catalog.fail(held, "late", now=clock.now())
    job = catalog.job(held.id)
    assert job is not None and job.state is JobState.QUEUED and job.lease_until is None


def test_ended_leases_are_taken_over_once_by_racing_workers(db_url: str, clock: FakeClock) -> None:
    """A dead worker's jobs, claimed at once by 2 catalogs x 3 threads: each exactly once."""
    jobs = 12
    catalogs = [Catalog.open(db_url) for _ in range(2)]
    try:
        for k in range(jobs):
            queued(catalogs[0], clock, f"1.2.826.0.1.3680043.8.498.{2000 + k}")
        dead = [catalogs[0].claim_next(clock.now(), "dead:1:0", lease=LEASE) for _ in range(jobs)]
        assert all(job is not None for job in dead)
        clock.advance(31)
        claims: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(6)

        def work(catalog: Catalog, name: str) -> None:
            try:
                start.wait()
                while (job := catalog.claim_next(clock.now(), name, lease=LEASE)) is not None:
                    with lock:
                        claims.append(job.id)
                    catalog.finish(job, now=clock.now())
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(catalog, f"c{c}-t{t}"))
            for c, catalog in enumerate(catalogs)
            for t in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(claims) == sorted(job.id for job in dead if job is not None)
        done = catalogs[1].jobs(JobState.DONE)
        assert len(done) == jobs and all(job.attempts == 2 for job in done)
    finally:
        for catalog in catalogs:
            catalog.close()
