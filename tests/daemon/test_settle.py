"""Settle: quiet time, early settle on release with complete geometry, re-opening, roles."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from bonect.catalog import Catalog, JobState, Role, SettleState, catalog_url
from bonect.catalog.records import SeriesGeometry
from bonect.daemon.settle import QuietWatch, series_is_complete, settle_once
from bonect.rules import RulesConfig
from catalog.catalog_support import (
    AXIAL,
    FakeClock,
    header,
    receive,
    series_headers,
)

RULES = RulesConfig()
QUIET = 60.0
MR = "1.2.826.0.1.3680043.8.498.100"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url(tmp_path, ""))
    yield opened
    opened.close()


def stack(n: int, spacing: float = 1.5, start: float = 0.0) -> list[tuple[float, float, float]]:
    return [(0.0, 0.0, start + k * spacing) for k in range(n)]


# -- series_is_complete (the stack checks themselves are in tests/dicom/test_geometry.py) -------


def test_series_geometry_checks() -> None:
    complete = SeriesGeometry(MR, tuple(stack(4)), (AXIAL,) * 4, (1,) * 4, None)
    assert series_is_complete(complete)
    assert not series_is_complete(replace(complete, positions=(*stack(3), None)))
    tilted = (1.0, 0.0, 0.0, 0.0, 0.9, 0.1)
    assert not series_is_complete(replace(complete, orientations=(*(AXIAL,) * 3, tilted)))
    enhanced = SeriesGeometry(MR, (stack(1)[0],), (AXIAL,), (40,), 40)
    assert series_is_complete(enhanced)
    assert not series_is_complete(replace(enhanced, expected_count=None))


# -- settle_once ----------------------------------------------------------------------------


def test_settles_after_the_quiet_time(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(5), clock.now())
    assert settle_once(catalog, RULES, clock.advance(QUIET - 1), quiet_seconds=QUIET) == []
    receive(catalog, [header(index=5)], clock.now())  # a late slice restarts the timer
    assert settle_once(catalog, RULES, clock.advance(QUIET - 1), quiet_seconds=QUIET) == []
    (job_id,) = settle_once(catalog, RULES, clock.advance(1), quiet_seconds=QUIET)
    job = catalog.job(job_id)
    assert job is not None and job.state is JobState.QUEUED and job.series_uid == MR
    series = catalog.series(MR)
    assert series is not None and series.settle_state is SettleState.SETTLED
    assert series.role is Role.CONVERT and series.settled_at == clock.now()
    assert settle_once(catalog, RULES, clock.advance(QUIET), quiet_seconds=QUIET) == []


def test_settles_early_on_release_with_complete_geometry(
    catalog: Catalog, clock: FakeClock
) -> None:
    receive(catalog, series_headers(6, expected=6), clock.now(), association_id="a1")
    assert settle_once(catalog, RULES, clock.advance(1), quiet_seconds=QUIET) == []  # open
    catalog.association_released("a1", clock.advance(1))
    (job_id,) = settle_once(catalog, RULES, clock.now(), quiet_seconds=QUIET)
    assert catalog.job(job_id) is not None


def test_not_early_when_a_slice_is_missing(catalog: Catalog, clock: FakeClock) -> None:
    headers = series_headers(6)
    receive(catalog, headers[:3] + headers[4:], clock.now(), association_id="a1")
    catalog.association_released("a1", clock.advance(1))
    assert settle_once(catalog, RULES, clock.now(), quiet_seconds=QUIET) == []
    # the quiet timer settles it anyway; the converter judges the geometry then
    assert len(settle_once(catalog, RULES, clock.advance(QUIET), quiet_seconds=QUIET)) == 1


def test_not_early_before_the_expected_count(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(4, expected=6), clock.now(), association_id="a1")
    catalog.association_released("a1", clock.advance(1))
    assert settle_once(catalog, RULES, clock.now(), quiet_seconds=QUIET) == []
    receive(catalog, [header(index=4, expected=6)], clock.advance(1), association_id="a2")
    receive(catalog, [header(index=5, expected=6)], clock.now(), association_id="a2")
    assert settle_once(catalog, RULES, clock.now(), quiet_seconds=QUIET) == []  # a2 still open
    catalog.association_released("a2", clock.now())
    assert len(settle_once(catalog, RULES, clock.now(), quiet_seconds=QUIET)) == 1


def test_enhanced_mr_settles_on_release(catalog: Catalog, clock: FakeClock) -> None:
    enhanced = replace(header(), number_of_frames=40, images_in_acquisition=None)
    receive(catalog, [enhanced], clock.now(), association_id="a1")
    catalog.association_released("a1", clock.advance(1))
    assert len(settle_once(catalog, RULES, clock.now(), quiet_seconds=QUIET)) == 1


def test_reopened_series_is_converted_again(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(4), clock.now(), association_id="a1")
    catalog.association_released("a1", clock.advance(1))
    (first,) = settle_once(catalog, RULES, clock.now(), quiet_seconds=QUIET)
    job = catalog.claim_next(clock.now(), "w1")
    assert job is not None and job.id == first
    catalog.finish(job, now=clock.advance(10))
    receive(catalog, [header(index=4)], clock.advance(5), association_id="a2")  # one more
    series = catalog.series(MR)
    assert series is not None and series.settle_state is SettleState.OPEN
    catalog.association_released("a2", clock.advance(1))
    (second,) = settle_once(catalog, RULES, clock.now(), quiet_seconds=QUIET)
    assert second != first
    again = catalog.claim_next(clock.now(), "w1")
    assert again is not None and again.id == second and again.generation == 2


def test_roles_of_a_mixed_delivery(catalog: Catalog, clock: FakeClock) -> None:
    receive(catalog, series_headers(4, MR), clock.now())
    receive(catalog, series_headers(4, "1.2.3.20", description="T1 MPRAGE"), clock.now())
    ct = series_headers(4, "1.2.3.30", modality="CT", description="CT head neck bone kernel")
    receive(catalog, ct, clock.now())
    queued = settle_once(catalog, RULES, clock.advance(QUIET), quiet_seconds=QUIET)
    assert len(queued) == 1
    roles = {s.series_uid: s.role for s in catalog.list_series()}
    assert roles == {MR: Role.CONVERT, "1.2.3.20": Role.IGNORE, "1.2.3.30": Role.KEEP_CT}
    kept = catalog.list_series(role=Role.KEEP_CT)
    assert [s.series_uid for s in kept] == ["1.2.3.30"]


# -- an aborted association is not a release ----------------------------------------------

ABORTED_QUIET = 3600.0


def settle(catalog: Catalog, now: datetime) -> list[int]:
    return settle_once(
        catalog, RULES, now, quiet_seconds=QUIET, aborted_quiet_seconds=ABORTED_QUIET
    )


def test_a_series_cut_by_an_aborted_association_waits_the_longer_timer(
    catalog: Catalog, clock: FakeClock
) -> None:
    """140 of 298 slices, no gap, then the association aborted (the daemon or the modality was
    killed): nothing says the series is complete, so it is not converted on the quiet timer."""
    receive(catalog, series_headers(6)[:4], clock.now(), association_id="a1")
    catalog.association_aborted("a1", clock.advance(1))
    assert settle(catalog, clock.now()) == []
    assert settle(catalog, clock.advance(QUIET * 2)) == []
    assert len(settle(catalog, clock.advance(ABORTED_QUIET))) == 1  # nobody sent the rest


def test_an_aborted_series_that_is_whole_by_its_expected_count_settles_at_once(
    catalog: Catalog, clock: FakeClock
) -> None:
    receive(catalog, series_headers(6, expected=6), clock.now(), association_id="a1")
    catalog.association_aborted("a1", clock.advance(1))
    assert len(settle(catalog, clock.now())) == 1


def test_an_aborted_series_short_of_its_expected_count_waits(
    catalog: Catalog, clock: FakeClock
) -> None:
    receive(catalog, series_headers(6, expected=6)[:4], clock.now(), association_id="a1")
    catalog.association_aborted("a1", clock.advance(1))
    assert settle(catalog, clock.advance(QUIET * 2)) == []


def test_the_full_resend_after_an_abort_settles_on_its_release(
    catalog: Catalog, clock: FakeClock
) -> None:
    headers = series_headers(6)
    receive(catalog, headers[:4], clock.now(), association_id="a1")
    catalog.association_aborted("a1", clock.advance(1))
    receive(catalog, headers, clock.advance(5), association_id="a2")
    catalog.association_released("a2", clock.advance(1))
    assert len(settle(catalog, clock.now())) == 1
    series = catalog.series(MR)
    assert series is not None and series.instance_count == 6


def test_a_series_being_received_when_the_daemon_stopped_counts_as_aborted(
    catalog: Catalog, clock: FakeClock
) -> None:
    """kill -9 of the daemon mid-series: no abort was ever recorded; at the next start the
    series whose last association neither released nor aborted are marked as cut."""
    receive(catalog, series_headers(6)[:4], clock.now(), association_id="a1")
    other = "1.2.826.0.1.3680043.8.498.200"
    receive(catalog, series_headers(3, series_uid=other), clock.now(), association_id="a2")
    catalog.association_released("a2", clock.now())

    assert catalog.associations_cut_by_a_stop(clock.advance(30)) == 1  # a1's, not a2's
    assert len(settle(catalog, clock.now())) == 1  # the released one
    assert settle(catalog, clock.advance(QUIET * 2)) == []  # the cut one waits


# -- a step of the wall clock (NTP, a resumed VM) -------------------------------------------


def test_a_forward_step_of_the_wall_clock_settles_nothing_still_arriving(
    catalog: Catalog, clock: FakeClock
) -> None:
    """Measured with libfaketime (docs/reliability.md): +1 h mid-series made the quiet timer
    (and the aborted association's) elapse, and a cut series was settled, converted and sent.
    The monotonic clock of :class:`QuietWatch` does not step."""
    monotonic = [1000.0]
    watch = QuietWatch(lambda: monotonic[0])
    receive(catalog, series_headers(40, expected=300)[:39], clock.now(), association_id="a1")
    assert settle_once(catalog, RULES, clock.now(), quiet_seconds=QUIET, watch=watch) == []
    monotonic[0] += 2.0
    stepped = clock.advance(3600)  # the wall clock steps; 2 s have passed
    assert settle_once(catalog, RULES, stepped, quiet_seconds=QUIET, watch=watch) == []
    series = catalog.series(MR)
    assert series is not None and series.settle_state is SettleState.OPEN
    # without the watch, the wall clock alone would have settled it (the defect)
    assert any(s.series_uid == MR for s in catalog.series_to_settle(stepped, QUIET))
    # the instances keep coming; once they stop, the quiet time passes on both clocks
    receive(catalog, series_headers(300, expected=300)[39:], clock.now(), association_id="a1")
    monotonic[0] += 1.0
    assert settle_once(catalog, RULES, clock.advance(1), quiet_seconds=QUIET, watch=watch) == []
    monotonic[0] += QUIET
    (job_id,) = settle_once(catalog, RULES, clock.advance(QUIET), quiet_seconds=QUIET, watch=watch)
    assert catalog.job(job_id) is not None
    assert catalog.series(MR).instance_count == 300  # type: ignore[union-attr]
