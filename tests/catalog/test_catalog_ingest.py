"""Recording instances: idempotent on the SOP Instance UID, counts, releases, re-opening."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from bonect.catalog import Catalog, Role, SettleState, patient_key
from bonect.catalog.tables import Instance, Series
from catalog.catalog_support import FakeClock, header, receive, series_headers

SERIES = "1.2.826.0.1.3680043.8.498.100"


def test_first_instance_creates_study_and_series(catalog: Catalog, clock: FakeClock) -> None:
    h = header(expected=4)
    record = catalog.record_instance(
        h, Path("/a/1.dcm"), received_at=clock.now(), association_id="a1"
    )
    assert record.created and not record.reopened
    assert record.path == Path("/a/1.dcm")
    series = catalog.series(SERIES)
    assert series is not None
    assert series.study_uid == h.study_uid
    assert series.modality == "MR"
    assert series.series_description == "ZTE bone ZTE"
    assert series.image_type == ("ORIGINAL", "PRIMARY", "OTHER")
    assert series.instance_count == 1
    assert series.expected_count == 4
    assert series.last_association_id == "a1"
    assert series.settle_state is SettleState.OPEN
    assert series.role is None
    assert series.patient_key == patient_key("PAT-0001") != "PAT-0001"
    assert len(series.patient_key) == 64


def test_resent_instance_replaces_the_path(catalog: Catalog, clock: FakeClock) -> None:
    h = header()
    catalog.record_instance(h, Path("/a/old.dcm"), received_at=clock.now())
    again = catalog.record_instance(h, Path("/a/new.dcm"), received_at=clock.advance(5))
    assert not again.created
    instances = catalog.instances(SERIES)
    assert [(i.sop_instance_uid, i.path) for i in instances] == [
        (h.sop_instance_uid, Path("/a/new.dcm"))
    ]
    series = catalog.series(SERIES)
    assert series is not None and series.instance_count == 1
    assert series.last_received_at == clock.now()


def test_instances_are_counted_and_ordered(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, list(reversed(series_headers(5))), clock.now())
    series = catalog.series(SERIES)
    assert series is not None and series.instance_count == 5
    assert [i.instance_number for i in catalog.instances(SERIES)] == [1, 2, 3, 4, 5]
    geometry = catalog.series_geometry(SERIES)
    assert geometry is not None
    assert len(geometry.positions) == 5 and geometry.frames == (1,) * 5
    assert geometry.positions[0] == pytest.approx((-10.0, -20.0, 30.0 + 4 * 1.5))


def test_release_marks_only_the_series_it_fed_last(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(2, "1.2.3.1"), clock.now(), association_id="a1")
    receive(catalog, series_headers(2, "1.2.3.2"), clock.now(), association_id="a2")
    assert catalog.association_released("a1", clock.advance(1)) == 1
    one, two = catalog.series("1.2.3.1"), catalog.series("1.2.3.2")
    assert one is not None and one.association_released_at == clock.now()
    assert two is not None and two.association_released_at is None
    # a later association feeding the series again clears the release
    receive(catalog, [header("1.2.3.1", 5)], clock.advance(1), association_id="a3")
    one = catalog.series("1.2.3.1")
    assert one is not None and one.association_released_at is None
    assert one.last_association_id == "a3"


def test_series_to_settle_by_quiet_time_or_release(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(2, "1.2.3.1"), clock.now(), association_id="a1")
    receive(catalog, series_headers(2, "1.2.3.2"), clock.now(), association_id="a2")
    assert catalog.series_to_settle(clock.advance(59), quiet_seconds=60) == []
    catalog.association_released("a2", clock.now())
    assert [s.series_uid for s in catalog.series_to_settle(clock.now(), 60)] == ["1.2.3.2"]
    due = catalog.series_to_settle(clock.advance(1), quiet_seconds=60)
    assert [s.series_uid for s in due] == ["1.2.3.1", "1.2.3.2"]


def test_settling_is_refused_after_a_new_instance(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(2), clock.now())
    (read,) = catalog.series_to_settle(clock.advance(61), quiet_seconds=60)
    receive(catalog, [header(index=2)], clock.now())  # arrives between read and settle
    assert (
        catalog.settle_series(SERIES, revision=read.revision, role=Role.CONVERT, now=clock.now())
        is None
    )
    series = catalog.series(SERIES)
    assert series is not None and series.settle_state is SettleState.OPEN


def test_new_instance_reopens_a_settled_series(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(3), clock.now())
    (read,) = catalog.series_to_settle(clock.advance(61), quiet_seconds=60)
    settled = catalog.settle_series(
        SERIES, revision=read.revision, role=Role.CONVERT, now=clock.now()
    )
    assert settled is not None and settled.job_id is not None
    # the same instance sent again does not re-open it ...
    again = catalog.record_instance(header(index=0), Path("/b/1"), received_at=clock.advance(5))
    assert not again.reopened
    series = catalog.series(SERIES)
    assert series is not None and series.settle_state is SettleState.SETTLED
    # ... a new one does
    new = catalog.record_instance(header(index=3), Path("/b/4"), received_at=clock.advance(5))
    assert new.created and new.reopened
    series = catalog.series(SERIES)
    assert series is not None
    assert series.settle_state is SettleState.OPEN and series.settled_at is None
    assert series.instance_count == 4


def test_patient_id_is_not_logged_above_debug(
    catalog: Catalog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bonect")
    headers = series_headers(3, patient_id="SECRET-ID-42")
    receive(catalog, headers, clock.now())
    (read,) = catalog.series_to_settle(clock.advance(61), quiet_seconds=60)
    catalog.settle_series(SERIES, revision=read.revision, role=Role.CONVERT, now=clock.now())
    receive(catalog, [header(index=9, patient_id="SECRET-ID-42")], clock.advance(1))
    assert caplog.records  # something was logged at INFO ...
    assert "SECRET-ID-42" not in caplog.text  # ... but never the patient ID
    assert "SECRET-ID-42" not in repr(headers[0])


def test_the_calling_ae_of_the_latest_instance_is_kept_per_series(
    catalog: Catalog, clock: FakeClock
) -> None:
    first, second, third = series_headers(3)
    catalog.record_instance(first, Path("/a/1"), received_at=clock.now(), calling_ae="MRC40 ")
    series = catalog.series(SERIES)
    assert series is not None and series.calling_ae == "MRC40"  # trailing padding dropped
    catalog.record_instance(second, Path("/a/2"), received_at=clock.now(), calling_ae="PACS2")
    series = catalog.series(SERIES)
    assert series is not None and series.calling_ae == "PACS2"
    catalog.record_instance(third, Path("/a/3"), received_at=clock.now())  # the drop folder
    series = catalog.series(SERIES)
    assert series is not None and series.calling_ae is None


def test_an_instance_that_claims_another_series_moves_there(
    catalog: Catalog, clock: FakeClock
) -> None:
    receive(catalog, series_headers(2, "1.2.3.1"), clock.now())
    moved = replace(header("1.2.3.2", 0), sop_instance_uid=header("1.2.3.1", 1).sop_instance_uid)
    record = catalog.record_instance(moved, Path("/b/moved"), received_at=clock.advance(1))
    assert record.created
    one, two = catalog.series("1.2.3.1"), catalog.series("1.2.3.2")
    assert one is not None and one.instance_count == 1
    assert two is not None and two.instance_count == 1
    assert [i.path for i in catalog.instances("1.2.3.2")] == [Path("/b/moved")]


def test_expected_count_is_filled_in_by_a_later_instance(
    catalog: Catalog, clock: FakeClock
) -> None:
    receive(catalog, [header(index=0)], clock.now())
    series = catalog.series(SERIES)
    assert series is not None and series.expected_count is None
    receive(catalog, [header(index=1, expected=7)], clock.now())
    receive(catalog, [header(index=2, expected=9)], clock.now())  # the first one given stays
    series = catalog.series(SERIES)
    assert series is not None and series.expected_count == 7 and series.instance_count == 3


def _delete_series(catalog: Catalog, series_uid: str) -> None:
    with catalog.writing() as session:
        series_id = session.scalar(select(Series.id).where(Series.series_uid == series_uid))
        session.execute(delete(Instance).where(Instance.series_id == series_id))
        session.execute(delete(Series).where(Series.id == series_id))


def test_a_deleted_series_is_created_again(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(2), clock.now())  # its id is now cached
    _delete_series(catalog, SERIES)
    record = catalog.record_instance(header(index=5), Path("/c/6"), received_at=clock.advance(1))
    assert record.created
    series = catalog.series(SERIES)
    assert series is not None and series.instance_count == 1
    assert [i.path for i in catalog.instances(SERIES)] == [Path("/c/6")]


def test_a_cached_id_taken_by_another_series_is_not_used(db_url: str, clock: FakeClock) -> None:
    first, second = Catalog.open(db_url), Catalog.open(db_url)
    try:
        receive(first, [header("1.2.3.1", 0)], clock.now())  # first caches 1.2.3.1's id
        _delete_series(first, "1.2.3.1")
        receive(second, [header("1.2.3.2", 0)], clock.now())  # SQLite may reuse that id
        receive(first, [header("1.2.3.1", 1)], clock.advance(1))
        one, two = first.series("1.2.3.1"), first.series("1.2.3.2")
        assert one is not None and one.instance_count == 1
        assert two is not None and two.instance_count == 1
        assert [i.sop_instance_uid for i in first.instances("1.2.3.2")] == [
            header("1.2.3.2", 0).sop_instance_uid
        ]
    finally:
        first.close()
        second.close()
