"""Prometheus metrics, in a registry owned by the app (not the process-global default)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Latency buckets for an API answering from PostgreSQL on a LAN: 2 ms … 10 s.
BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _PoolCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats()
        for key in ("pool_size", "pool_available", "requests_waiting", "pool_max"):
            family = GaugeMetricFamily(f"smartfarm_db_{key}", f"psycopg pool {key}")
            family.add_metric([], float(stats.get(key, 0)))
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "smartfarm_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "smartfarm_http_unexpected_errors",
            "requests that ended in an unexpected exception (answered 500)",
            registry=self.registry,
        )
        self.ingested = Counter(
            "smartfarm_ingest_readings",
            "readings stored in sensor_data",
            registry=self.registry,
        )

    def watch_pool(self, stats: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_PoolCollector(stats))
