"""The Prometheus endpoint: every metric the README lists, read over HTTP from a port-0 server."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from bonect.catalog import Catalog, catalog_url
from bonect.catalog.jobs import JobState
from bonect.catalog.priors import PriorState
from bonect.catalog.tables import Role
from bonect.daemon.prometheus import NodeMetrics
from catalog.catalog_support import FakeClock, receive, record_priors, series_headers

SERIES = ("1.2.826.0.1.3680043.8.498.100", "1.2.826.0.1.3680043.8.498.200")


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url(tmp_path / "var", ""))
    yield opened
    opened.close()


def queue_jobs(catalog: Catalog, clock: FakeClock) -> list[int]:
    """Two bone-MR series settled: two queued jobs, created at the clock's start."""
    ids = []
    for uid in SERIES:
        receive(catalog, series_headers(3, uid), clock.now())
        settled = catalog.settle_series(uid, revision=3, role=Role.CONVERT, now=clock.now())
        assert settled is not None and settled.job_id is not None
        ids.append(settled.job_id)
    return ids


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted labels: value}}`` from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def test_the_endpoint_serves_every_metric(catalog: Catalog) -> None:
    clock = FakeClock()
    first, second = queue_jobs(catalog, clock)
    job = catalog.claim_next(clock.now(), worker_id="w")
    assert job is not None and job.id == first
    catalog.fail(job, "a reason", now=clock.now())
    clock.advance(90)  # the second job has waited 90 s

    metrics = NodeMetrics.create(catalog, model_label=lambda: "tiny v1", clock=clock.now)
    metrics.instances_received.inc(6)
    metrics.series_completed.inc(2)
    metrics.conversion_seconds.observe(12.5)
    metrics.send_failures.inc(3)
    port = metrics.serve("127.0.0.1", 0)
    try:
        assert port > 0
        samples = scrape(port)
    finally:
        metrics.stop()

    assert samples["bonect_instances_received_total"][()] == 6
    assert samples["bonect_series_completed_total"][()] == 2
    assert samples["bonect_send_failures_total"][()] == 3
    assert samples["bonect_conversion_seconds_count"][()] == 1
    assert samples["bonect_conversion_seconds_sum"][()] == 12.5
    assert samples["bonect_conversion_seconds_bucket"][(("le", "20.0"),)] == 1
    assert samples["bonect_conversion_seconds_bucket"][(("le", "10.0"),)] == 0
    jobs = {labels[0][1]: value for labels, value in samples["bonect_jobs"].items()}
    assert jobs == {s.value: 0 for s in JobState} | {"queued": 1, "failed": 1}
    assert samples["bonect_oldest_queued_job_age_seconds"][()] == 90
    assert samples["bonect_model_info"] == {(("label", "tiny v1"),): 1}
    assert samples["bonect_catalog_up"][()] == 1
    assert second in {j.id for j in catalog.jobs(JobState.QUEUED)}


def test_prior_searches_and_retrievals_are_counted(catalog: Catalog) -> None:
    clock = FakeClock()
    metrics = NodeMetrics.create(catalog, model_label=lambda: "m", clock=clock.now)
    port = metrics.serve("127.0.0.1", 0)
    try:
        before = scrape(port)
        record_priors(catalog, clock.now())
        after = scrape(port)
    finally:
        metrics.stop()

    assert set(before["bonect_prior_searches"].values()) == {0}
    searches = {labels[0][1]: v for labels, v in after["bonect_prior_searches"].items()}
    assert searches == {s.value: 0 for s in PriorState} | {"done": 1, "none_found": 1, "failed": 1}
    retrievals = {labels[0][1]: v for labels, v in after["bonect_prior_retrievals"].items()}
    assert retrievals == {"pending": 0, "retrieved": 1, "failed": 0}
    assert after["bonect_prior_instances_retrieved"][()] == 6


def test_nothing_waiting_is_age_zero_and_the_model_label_follows_the_holder(
    catalog: Catalog,
) -> None:
    label = ["classical ZTE map"]
    metrics = NodeMetrics.create(catalog, model_label=lambda: label[0], clock=FakeClock().now)
    port = metrics.serve("127.0.0.1", 0)
    try:
        before = scrape(port)
        label[0] = "tiny v2"  # swapped in between two scrapes
        after = scrape(port)
    finally:
        metrics.stop()
    assert before["bonect_oldest_queued_job_age_seconds"][()] == 0
    assert before["bonect_model_info"] == {(("label", "classical ZTE map"),): 1}
    assert after["bonect_model_info"] == {(("label", "tiny v2"),): 1}


class _DownCatalog:
    """A catalog whose database does not answer."""

    def counts_by_state(self) -> dict[JobState, int]:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    def oldest_waiting_since(self) -> datetime | None:
        raise OperationalError("SELECT", {}, Exception("database is locked"))


def test_a_scrape_still_answers_when_the_catalog_does_not() -> None:
    metrics = NodeMetrics.create(
        _DownCatalog(),  # type: ignore[arg-type]
        model_label=lambda: "classical ZTE map",
        clock=FakeClock().now,
    )
    metrics.instances_received.inc()
    port = metrics.serve("127.0.0.1", 0)
    try:
        samples = scrape(port)
    finally:
        metrics.stop()
    assert samples["bonect_catalog_up"][()] == 0
    assert samples["bonect_instances_received_total"][()] == 1
    assert "bonect_jobs" not in samples
