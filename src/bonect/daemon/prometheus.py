"""Prometheus metrics of the node, in a registry of its own, served over HTTP on request.

Counters and the conversion histogram are updated by the node as things happen. The job gauges
and the age of the oldest waiting job are read from the catalog at scrape time, so they are
right whichever process (or host) changed the catalog; the model label is asked of the holder.

* ``bonect_instances_received_total`` (counter): instances archived, C-STORE and drop folder;
* ``bonect_series_completed_total`` (counter): bone-MR series settled and queued;
* ``bonect_jobs{state}`` (gauge): jobs by state, every state, zero included;
* ``bonect_oldest_queued_job_age_seconds`` (gauge): age of the oldest job waiting for a worker;
* ``bonect_conversion_seconds`` (histogram): seconds to convert one series;
* ``bonect_send_failures_total`` (counter): instances not stored on an attempt;
* ``bonect_model_info{label}`` (info): the conversion method in use;
* ``bonect_catalog_up`` (gauge): 1 when the catalog answered the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from bonect.catalog import priors as prior_store
from bonect.catalog.priors import PriorState, RetrievalState
from bonect.catalog.queue import Catalog

logger = logging.getLogger(__name__)


class _CatalogCollector(Collector):
    """Read at scrape time: jobs by state, age of the oldest waiting job, model in use."""

    def __init__(
        self, catalog: Catalog, model_label: Callable[[], str], clock: Callable[[], datetime]
    ) -> None:
        self._catalog = catalog
        self._model_label = model_label
        self._clock = clock

    def describe(self) -> Iterator[Any]:
        """The metric families without values, so registering reads nothing."""
        yield GaugeMetricFamily("bonect_jobs", "Jobs by state", labels=["state"])
        yield GaugeMetricFamily(
            "bonect_oldest_queued_job_age_seconds", "Age of the oldest job waiting"
        )
        yield InfoMetricFamily("bonect_model", "The conversion method in use")
        yield GaugeMetricFamily("bonect_catalog_up", "1 when the catalog answered")
        yield from self._prior_families()

    @staticmethod
    def _prior_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "bonect_prior_searches", "Prior searches ([[sources]]) by state", labels=["state"]
            ),
            GaugeMetricFamily(
                "bonect_prior_retrievals", "CT series wanted from sources", labels=["state"]
            ),
            GaugeMetricFamily(
                "bonect_prior_instances_retrieved", "Instances retrieved from sources in all"
            ),
        )

    def collect(self) -> Iterator[Any]:
        info = InfoMetricFamily("bonect_model", "The conversion method in use")
        info.add_metric([], {"label": self._model_label()})
        yield info
        try:
            counts = self._catalog.counts_by_state()
            oldest = self._catalog.oldest_waiting_since()
            priors = prior_store.counts(self._catalog)
        except SQLAlchemyError as exc:  # a scrape must not fail: say the catalog is down
            logger.warning("metrics: the catalog did not answer: %s", exc)
            yield GaugeMetricFamily("bonect_catalog_up", "1 when the catalog answered", value=0)
            return
        yield GaugeMetricFamily("bonect_catalog_up", "1 when the catalog answered", value=1)
        jobs = GaugeMetricFamily("bonect_jobs", "Jobs by state", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state.value], count)
        yield jobs
        age = 0.0 if oldest is None else max(0.0, (self._clock() - oldest).total_seconds())
        yield GaugeMetricFamily(
            "bonect_oldest_queued_job_age_seconds", "Age of the oldest job waiting", value=age
        )
        searches, retrievals, instances = self._prior_families()
        for searched in PriorState:
            searches.add_metric([searched.value], priors.tasks.get(searched, 0))
        for wanted in RetrievalState:
            retrievals.add_metric([wanted.value], priors.retrievals.get(wanted, 0))
        instances.add_metric([], priors.instances_retrieved)
        yield from (searches, retrievals, instances)


@dataclass
class NodeMetrics:
    """The node's metrics; build with :meth:`create`, serve with :meth:`serve`."""

    registry: CollectorRegistry
    instances_received: Counter
    series_completed: Counter
    conversion_seconds: Histogram
    send_failures: Counter
    server: Any = None

    @classmethod
    def create(
        cls, catalog: Catalog, *, model_label: Callable[[], str], clock: Callable[[], datetime]
    ) -> NodeMetrics:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_CatalogCollector(catalog, model_label, clock))
        return cls(
            registry=registry,
            instances_received=Counter(
                "bonect_instances_received", "Instances archived", registry=registry
            ),
            series_completed=Counter(
                "bonect_series_completed", "Bone-MR series settled and queued", registry=registry
            ),
            conversion_seconds=Histogram(
                "bonect_conversion_seconds",
                "Seconds to convert one series",
                buckets=(1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
                registry=registry,
            ),
            send_failures=Counter(
                "bonect_send_failures", "Instances not stored on an attempt", registry=registry
            ),
        )

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics; returns the port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.server = server
        bound = int(server.server_address[1])
        logger.info("Prometheus metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
