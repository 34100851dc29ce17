"""Sends (one row per sCT instance per destination) and model versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonect.catalog import Catalog, JobRecord, SendStatus
from bonect.catalog.records import UncertaintySummary
from catalog.catalog_support import FakeClock, receive, series_headers

INSTANCES = [(f"2.25.{k}", Path(f"/out/{k}.dcm")) for k in range(3)]


@pytest.fixture
def job(catalog: Catalog, clock: FakeClock) -> JobRecord:
    receive(catalog, series_headers(3), clock.now())
    catalog.enqueue_job(series_headers(1)[0].series_uid, clock.now())
    claimed = catalog.claim_next(clock.now(), "w1")
    assert claimed is not None
    return claimed


def test_planned_sends_are_pending(catalog: Catalog, clock: FakeClock, job: JobRecord) -> None:
    assert catalog.plan_sends(job, INSTANCES, ["pacs", "backup"], now=clock.now()) == 6
    assert catalog.plan_sends(job, INSTANCES, ["pacs", "backup"], now=clock.now()) == 0
    pending = catalog.pending_sends(job)
    assert len(pending) == 6
    assert {s.status for s in pending} == {SendStatus.PENDING}
    assert [s.destination for s in pending] == ["backup"] * 3 + ["pacs"] * 3


def test_groups_are_planned_each_to_its_own_destinations(
    catalog: Catalog, clock: FakeClock, job: JobRecord
) -> None:
    """The sCT to every destination, its uncertainty object only to those that asked."""
    seg = [("2.25.99", Path("/out/SEG_0001.dcm"))]
    groups = [(INSTANCES, ["pacs", "backup"]), (seg, ["pacs"])]
    assert catalog.plan_send_groups(job, groups, now=clock.now()) == 7
    assert catalog.plan_send_groups(job, groups, now=clock.now()) == 0  # a resumed job
    pending = catalog.pending_sends(job)
    assert sorted(s.destination for s in pending if s.sop_instance_uid == "2.25.99") == ["pacs"]
    assert [s.sop_instance_uid for s in pending if s.destination == "pacs"][-1] == "2.25.99"


def test_the_uncertainty_summary_is_kept_with_the_job(
    catalog: Catalog, clock: FakeClock, job: JobRecord
) -> None:
    summary = UncertaintySummary(share=0.032, threshold_hu=120.0)
    converted = catalog.mark_converted(
        job, output_dir=Path("/out"), model_version="m 1", now=clock.now(), uncertainty=summary
    )
    assert converted.uncertainty == summary
    again = catalog.job(job.id)
    assert again is not None and again.uncertainty == summary
    assert summary.text() == "planes disagree by > 120 HU in 3.2 % of the head"
    (row,) = catalog.jobs(None, limit=1)
    assert row.uncertainty == summary


def test_half_sent_series_resumes_with_the_rest(
    catalog: Catalog, clock: FakeClock, job: JobRecord
) -> None:
    catalog.plan_sends(job, INSTANCES, ["pacs"], now=clock.now())
    catalog.record_send(
        job, "2.25.0", "pacs", status=SendStatus.STORED, status_code=0, now=clock.now()
    )
    failed = catalog.record_send(
        job.id,
        "2.25.1",
        "pacs",
        status=SendStatus.PENDING,
        error="timeout",
        now=clock.advance(30),
    )
    assert failed.attempts == 1 and failed.last_error == "timeout"
    # the process dies here; a new one asks what is left
    left = catalog.pending_sends(job.id)
    assert [s.sop_instance_uid for s in left] == ["2.25.1", "2.25.2"]
    stored = catalog.record_send(
        job, "2.25.1", "pacs", status=SendStatus.STORED, status_code=0xB000, now=clock.advance(1)
    )
    assert stored.attempts == 2 and stored.last_status_code == 0xB000
    assert [s.sop_instance_uid for s in catalog.pending_sends(job)] == ["2.25.2"]
    assert len(catalog.sends(job)) == 3


def test_unplanned_send_needs_a_path(catalog: Catalog, clock: FakeClock, job: JobRecord) -> None:
    with pytest.raises(ValueError, match="never planned"):
        catalog.record_send(job, "2.25.9", "pacs", status=SendStatus.STORED, now=clock.now())
    record = catalog.record_send(
        job,
        "2.25.9",
        "pacs",
        status=SendStatus.FAILED,
        status_code=0xA700,
        now=clock.now(),
        path=Path("/out/9.dcm"),
    )
    assert record.path == Path("/out/9.dcm") and record.status is SendStatus.FAILED


def test_a_plan_that_replaces_keeps_its_own_sends_and_drops_the_others(
    catalog: Catalog, clock: FakeClock, job: JobRecord, caplog: pytest.LogCaptureFixture
) -> None:
    """A job converted again after a crash: its sends so far stay as they were (the same
    UIDs); those of a conversion by another model (other UIDs) are dropped, and the ones that
    were tried are logged, since their instances may be at the destination."""
    catalog.plan_send_groups(job, [(INSTANCES, ["pacs"])], now=clock.now(), replace=True)
    stored_uid = INSTANCES[0][0]
    catalog.record_send(job, stored_uid, "pacs", status=SendStatus.STORED, now=clock.now())

    # the same conversion again: nothing added, nothing dropped, the stored send kept
    again = catalog.plan_send_groups(job, [(INSTANCES, ["pacs"])], now=clock.now(), replace=True)
    assert again == 0
    assert [s.sop_instance_uid for s in catalog.pending_sends(job)] == [u for u, _ in INSTANCES[1:]]
    assert {s.status for s in catalog.sends(job) if s.sop_instance_uid == stored_uid} == {
        SendStatus.STORED
    }

    # another model: other UIDs on the same paths
    other = [(f"2.25.9{k}", path) for k, (_, path) in enumerate(INSTANCES)]
    with caplog.at_level("WARNING", logger="bonect.catalog"):
        assert (
            catalog.plan_send_groups(job, [(other, ["pacs"])], now=clock.now(), replace=True) == 3
        )
    sends = catalog.sends(job)
    assert sorted(s.sop_instance_uid for s in sends) == sorted(u for u, _ in other)
    assert {s.status for s in sends} == {SendStatus.PENDING}
    (warning,) = [r for r in caplog.records if "converted again by another model" in r.message]
    assert "1 instance(s)" in warning.message and "(1 stored)" in warning.message
