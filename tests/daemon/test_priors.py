"""The "find priors" step: allowed hours and backoff on a fake clock, search and retrieval
decisions against a fake source (the real protocol is in tests/e2e/test_priors_e2e.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path

import pytest
from pynetdicom.events import EventHandlerType

from bonect.catalog import Catalog, Role
from bonect.catalog import priors as store
from bonect.catalog.priors import PriorState, RetrievalState
from bonect.config import Config, SourceConfig, parse_hours
from bonect.daemon.priors import PriorStep, in_allowed_hours, next_opening, run_priors_once
from bonect.dicom.query_retrieve import (
    QueryRetrieveClient,
    QueryRetrieveRefused,
    QueryTimeouts,
    RetrieveResult,
    SeriesMatch,
    SourceUnavailable,
    StoreHandler,
    StudyMatch,
)
from catalog.catalog_support import FakeClock, header
from dicom_peers import free_port

MR_SERIES = "1.2.826.0.1.3680043.8.498.100"
MR_STUDY = "1.2.826.0.1.3680043.8.498.1"
CT_STUDY = "1.2.826.0.1.3680043.8.498.2"
CT_SERIES = "1.2.826.0.1.3680043.8.498.200"
SCOUT_SERIES = "1.2.826.0.1.3680043.8.498.201"
PATIENT = "PAT-0001"
CET = timezone(timedelta(hours=1))


class FakeSource:
    """A PACS in memory: studies by patient, series by study; records every request."""

    def __init__(self) -> None:
        self.studies: list[StudyMatch] = []
        self.series: dict[str, list[SeriesMatch]] = {}
        self.down = False
        self.refuse_move = False
        self.requests: list[tuple[str, object]] = []

    def _check(self) -> None:
        if self.down:
            raise SourceUnavailable("no association", source="pacs")

    def find_studies(
        self,
        patient_id: str,
        *,
        issuer_of_patient_id: str = "",
        date_from: date | None = None,
        date_to: date | None = None,
        modality: str = "CT",
    ) -> list[StudyMatch]:
        self._check()
        self.requests.append(("find_studies", (patient_id, date_from, date_to)))
        low = date_from.strftime("%Y%m%d") if date_from else ""
        high = date_to.strftime("%Y%m%d") if date_to else "99999999"
        return [
            s for s in self.studies if s.patient_id == patient_id and low <= s.study_date <= high
        ]

    def find_series(self, study_uid: str) -> list[SeriesMatch]:
        self._check()
        self.requests.append(("find_series", study_uid))
        return self.series.get(study_uid, [])

    def move_series(self, study_uid: str, series_uid: str, *, move_ae: str) -> RetrieveResult:
        self._check()
        if self.refuse_move:
            raise QueryRetrieveRefused("move destination unknown", source="pacs")
        self.requests.append(("move", (series_uid, move_ae)))
        return RetrieveResult(series_uid, 0, completed=3, failed=0, warning=0)

    def get_series(
        self,
        study_uid: str,
        series_uid: str,
        *,
        on_store: StoreHandler,
        handlers: Sequence[EventHandlerType] = (),
    ) -> RetrieveResult:
        raise AssertionError("not used")

    @property
    def moved(self) -> list[object]:
        return [args for kind, args in self.requests if kind == "move"]

    @property
    def asked(self) -> int:
        return len(self.requests)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    yield opened
    opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 1, 8, 0, tzinfo=UTC))


@pytest.fixture
def source() -> FakeSource:
    fake = FakeSource()
    fake.studies.append(StudyMatch(CT_STUDY, "20260101", PATIENT, "", ("CT",)))
    fake.series[CT_STUDY] = [
        SeriesMatch(CT_STUDY, SCOUT_SERIES, "CT", "Scout", "", 1),
        SeriesMatch(CT_STUDY, CT_SERIES, "CT", "Head 1.0", "", 3),
    ]
    return fake


def settled_mr(catalog: Catalog, now: datetime, study_date: str = "20260301") -> None:
    for k in range(3):
        catalog.record_instance(
            dataclasses.replace(
                header(MR_SERIES, k, study_uid=MR_STUDY, patient_id=PATIENT),
                study_date=study_date,
            ),
            Path(f"/nowhere/{k}.dcm"),
            received_at=now,
        )
    record = catalog.series(MR_SERIES)
    assert record is not None
    assert catalog.settle_series(MR_SERIES, revision=record.revision, role=Role.CONVERT, now=now)


def config_with(**source: object) -> Config:
    keys: dict[str, object] = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1"}
    keys.update({"port": 4242, **source})
    return Config.model_validate({"sources": [keys]})


def step(
    catalog: Catalog,
    config: Config,
    now: datetime,
    fake: FakeSource,
    *,
    tz: tzinfo | None = None,
) -> PriorStep | None:
    return run_priors_once(catalog, config, now, client_for=lambda _: fake, tz=tz)


# -- config and hours ----------------------------------------------------------------------------


def test_source_config_defaults_and_validation() -> None:
    config = config_with(retrieve="get")
    (source,) = config.sources
    assert (source.retrieve, source.move_destination_ae, source.hours) == ("get", None, None)
    assert (source.max_associations, source.max_instances_per_second) == (2, 0.0)
    assert parse_hours("20-06") == (1200, 360)
    assert parse_hours("07:30-18") == (450, 1080)
    for bad in ("20", "25-06", "08-08", "8h-9h"):
        with pytest.raises(ValueError):
            parse_hours(bad)
    with pytest.raises(ValueError, match="unique"):
        Config.model_validate({"sources": [dict(name="a", ae_title="P", host="h", port=1)] * 2})
    with pytest.raises(ValueError):
        SourceConfig.model_validate(
            {"name": "a", "ae_title": "P", "host": "h", "port": 1, "retrieve": "push"}
        )


def test_allowed_hours_wrap_past_midnight() -> None:
    night = (20 * 60, 6 * 60)

    def at(hour: int, minute: int = 0) -> datetime:
        return datetime(2026, 3, 1, hour, minute, tzinfo=CET)

    assert in_allowed_hours(night, at(20))
    assert in_allowed_hours(night, at(23, 59))
    assert in_allowed_hours(night, at(5, 59))
    assert not in_allowed_hours(night, at(6))
    assert not in_allowed_hours(night, at(12))
    assert in_allowed_hours(None, at(12))
    opening = next_opening(night, at(12).astimezone(UTC), CET)
    assert opening == at(20).astimezone(UTC)
    assert next_opening(night, at(21).astimezone(UTC), CET) == at(20) + timedelta(days=1)


def test_outside_allowed_hours_nothing_is_asked(
    catalog: Catalog, clock: FakeClock, source: FakeSource
) -> None:
    config = config_with(allowed_hours="20-06")
    settled_mr(catalog, clock.now())
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=CET).astimezone(UTC)
    result = step(catalog, config, noon, source, tz=CET)
    assert result is not None and result.state is PriorState.WAITING
    assert "allowed hours" in (result.reason or "")
    assert source.asked == 0
    # not due before the window opens; then it runs
    assert step(catalog, config, noon + timedelta(hours=7), source, tz=CET) is None
    assert source.asked == 0
    evening = datetime(2026, 3, 1, 20, 1, tzinfo=CET).astimezone(UTC)
    done = step(catalog, config, evening, source, tz=CET)
    assert done is not None and done.state is PriorState.DONE
    assert source.moved == [(CT_SERIES, "BONECT")]


# -- search and retrieve -------------------------------------------------------------------------


def test_retrieves_the_ct_not_the_scout_once(
    catalog: Catalog, clock: FakeClock, source: FakeSource
) -> None:
    config = config_with(move_destination_ae="BONECT_QR")
    settled_mr(catalog, clock.now())
    result = step(catalog, config, clock.now(), source)
    assert result is not None and result.state is PriorState.DONE
    assert result.retrieved == (CT_SERIES,)
    assert source.moved == [(CT_SERIES, "BONECT_QR")]
    (row,) = store.retrievals(catalog)
    assert (row.series_uid, row.state, row.completed) == (CT_SERIES, RetrievalState.RETRIEVED, 3)
    # the window asked for is the MR's date +- pair_window_days
    _, (_, low, high) = source.requests[0]
    assert (low, high) == (date(2025, 8, 30), date(2026, 8, 31))
    # nothing more to do: the task is not claimed again, nothing asked again
    assert step(catalog, config, clock.advance(3600), source) is None
    assert len(source.moved) == 1


def test_never_asks_for_a_series_already_in_the_archive(
    catalog: Catalog, clock: FakeClock, source: FakeSource
) -> None:
    catalog.record_instance(
        header(CT_SERIES, 0, study_uid=CT_STUDY, modality="CT", patient_id=PATIENT),
        Path("/nowhere/ct.dcm"),
        received_at=clock.now(),
    )
    settled_mr(catalog, clock.now())
    result = step(catalog, config_with(), clock.now(), source)
    assert result is not None and result.state is PriorState.NONE_FOUND
    assert "already in the archive" in (result.reason or "")
    assert source.moved == []


def test_ct_outside_the_window_is_not_retrieved_and_says_why(
    catalog: Catalog, clock: FakeClock, source: FakeSource
) -> None:
    source.studies = [StudyMatch(CT_STUDY, "20240301", PATIENT, "", ("CT",))]
    settled_mr(catalog, clock.now())
    result = step(catalog, config_with(), clock.now(), source)
    assert result is not None and result.state is PriorState.NONE_FOUND
    assert "outside the pairing window" in (result.reason or "")
    assert source.moved == []
    (task,) = store.tasks(catalog)
    assert task.state is PriorState.NONE_FOUND and task.reason == result.reason


def test_our_own_sct_in_the_window_does_not_hide_why_the_prior_is_missing(
    catalog: Catalog, clock: FakeClock, source: FakeSource
) -> None:
    """The node sent its sCT of this MR back to the PACS: the MR's study now holds a CT
    series of ours. It is no prior, and the reason still names the CT outside the window."""
    source.studies = [
        StudyMatch(CT_STUDY, "20240301", PATIENT, "", ("CT",)),
        StudyMatch(MR_STUDY, "20260301", PATIENT, "", ("MR", "CT")),
    ]
    source.series[MR_STUDY] = [
        SeriesMatch(
            MR_STUDY, "1.2.826.0.1.3680043.8.498.300", "CT", "sCT", "", 3, manufacturer="bonect"
        ),
    ]
    settled_mr(catalog, clock.now())
    result = step(catalog, config_with(), clock.now(), source)
    assert result is not None and result.state is PriorState.NONE_FOUND
    assert "outside the pairing window" in (result.reason or ""), result.reason
    assert source.moved == []


def test_no_ct_at_all_is_none_found(catalog: Catalog, clock: FakeClock) -> None:
    settled_mr(catalog, clock.now())
    result = step(catalog, config_with(), clock.now(), FakeSource())
    assert result is not None and result.state is PriorState.NONE_FOUND
    assert result.reason == "no CT study of this patient at the source"


def test_source_down_is_retried_with_backoff_then_done(
    catalog: Catalog, clock: FakeClock, source: FakeSource
) -> None:
    config = Config.model_validate(
        {
            "sources": [{"name": "pacs", "ae_title": "PACS", "host": "h", "port": 1}],
            "sender": {"retry_initial_seconds": 10, "retry_max_seconds": 40},
        }
    )
    settled_mr(catalog, clock.now())
    source.down = True
    delays = []
    for _ in range(4):
        result = step(catalog, config, clock.now(), source)
        assert result is not None and result.state is PriorState.WAITING
        (task,) = store.tasks(catalog)
        delays.append((task.next_attempt_at - clock.now()).total_seconds())
        assert step(catalog, config, task.next_attempt_at - timedelta(seconds=1), source) is None
        clock.current = task.next_attempt_at
    assert delays == [10, 20, 40, 40]
    assert store.tasks(catalog)[0].attempts == 4
    source.down = False
    result = step(catalog, config, clock.now(), source)
    assert result is not None and result.state is PriorState.DONE
    assert source.moved == [(CT_SERIES, "BONECT")]


def test_unknown_move_destination_fails_for_good(
    catalog: Catalog, clock: FakeClock, source: FakeSource
) -> None:
    source.refuse_move = True
    settled_mr(catalog, clock.now())
    result = step(catalog, config_with(), clock.now(), source)
    assert result is not None and result.state is PriorState.FAILED
    assert step(catalog, config_with(), clock.advance(86400), source) is None


def test_interrupted_retrieval_resumes_the_pending_series(
    catalog: Catalog, clock: FakeClock, source: FakeSource
) -> None:
    settled_mr(catalog, clock.now())
    store.create_task(catalog, MR_SERIES, "pacs", clock.now())
    claimed = store.claim_next(catalog, clock.now(), "dead-process")
    assert claimed is not None
    wanted = store.WantedSeries(CT_STUDY, CT_SERIES, "20260101", "Head 1.0", 3)
    store.want_series(catalog, claimed, [wanted], clock.now())
    store.set_retrieving(catalog, claimed.id, clock.now())
    # a partial C-MOVE had stored one instance before the process died
    catalog.record_instance(
        header(CT_SERIES, 0, study_uid=CT_STUDY, modality="CT", patient_id=PATIENT),
        Path("/nowhere/ct.dcm"),
        received_at=clock.now(),
    )
    assert step(catalog, config_with(), clock.now(), source) is None  # still in flight
    assert store.requeue_interrupted(catalog, clock.now()) == [claimed.id]
    result = step(catalog, config_with(), clock.now(), source)
    assert result is not None and result.state is PriorState.DONE
    assert source.moved == [(CT_SERIES, "BONECT")]
    assert not [r for r in source.requests if r[0] == "find_studies"]  # no new search


def test_task_creation_is_idempotent(catalog: Catalog, clock: FakeClock) -> None:
    settled_mr(catalog, clock.now())
    first = store.create_task(catalog, MR_SERIES, "pacs", clock.now())
    assert store.create_task(catalog, MR_SERIES, "pacs", clock.now()) == first
    assert store.series_without_tasks(catalog, "pacs") == []
    assert store.series_without_tasks(catalog, "other") == [MR_SERIES]


def test_a_patient_id_with_wildcards_is_never_queried() -> None:
    (source,) = config_with().sources
    client = QueryRetrieveClient(source, calling_ae="BONECT")
    for risky in ("PAT*", "PA?1", ""):
        with pytest.raises(QueryRetrieveRefused):  # refused before any association
            client.find_studies(risky)


def test_a_source_that_is_down_is_retryable() -> None:
    (source,) = config_with(port=free_port()).sources
    client = QueryRetrieveClient(source, calling_ae="BONECT", timeouts=QueryTimeouts(connect=2))
    with pytest.raises(SourceUnavailable) as caught:
        client.find_studies(PATIENT)
    assert caught.value.retryable and "pacs" in str(caught.value)
