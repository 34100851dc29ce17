"""Prometheus metrics of the node, in a registry of its own, served over HTTP on request."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

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

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("bonect_jobs", "Jobs by state", labels=["state"])
        for state, count in self._catalog.counts_by_state().items():
            jobs.add_metric([state.value], count)
        yield jobs
        oldest = self._catalog.oldest_waiting_since()
        age = 0.0 if oldest is None else (self._clock() - oldest).total_seconds()
        yield GaugeMetricFamily(
            "bonect_oldest_queued_job_age_seconds", "Age of the oldest job waiting", value=age
        )
        info = InfoMetricFamily("bonect_model", "The conversion method in use")
        info.add_metric([], {"label": self._model_label()})
        yield info


@dataclass
class NodeMetrics:
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
                buckets=(5, 10, 20, 40, 80, 160, 320, 640),
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
