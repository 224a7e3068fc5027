"""Job metrics for /metrics: this process's job outcomes and durations (a worker middleware), and
the queue as all workers see it (counts read from PostgreSQL every ``refresh_s``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cloud.jobs.queue import JobQueue

log = logging.getLogger(__name__)

BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0)


class _QueueCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._snapshot()
        if not stats:
            return
        jobs = GaugeMetricFamily(
            "smartfarm_job_queue", "jobs by state, all workers", labels=["state"]
        )
        for state in ("todo", "scheduled", "doing"):
            jobs.add_metric([state], float(stats.get(state, 0)))
        yield jobs
        for name, key, help_text in (
            ("smartfarm_job_failures_24h", "failed_24h", "jobs failed for good in 24 h"),
            ("smartfarm_job_retries_24h", "retried_24h", "failed attempts retried in 24 h"),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["task"])
            for task, count in sorted(stats.get(key, {}).items()):
                family.add_metric([task], float(count))
            yield family
        workers = GaugeMetricFamily("smartfarm_job_workers", "workers with a recent heartbeat")
        workers.add_metric([], float(stats.get("workers", 0)))
        yield workers
        oldest = stats.get("oldest_todo_s")
        age = GaugeMetricFamily(
            "smartfarm_job_oldest_waiting_seconds", "age of the oldest job due and not started"
        )
        age.add_metric([], float(oldest or 0))
        yield age


class JobMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "smartfarm_jobs",
            "jobs run by this process's worker, by outcome (succeeded, retry, failed)",
            ["task", "outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "smartfarm_job_duration_seconds",
            "job run time in this process",
            ["task"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.snapshot: dict[str, Any] = {}
        registry.register(_QueueCollector(lambda: self.snapshot))

    async def middleware(
        self, call_next: Callable[[], Awaitable[Any]], context: Any, worker: Any
    ) -> Any:
        """procrastinate worker middleware: count and time every job."""
        name = context.job.task_name
        started = time.perf_counter()
        try:
            result = await call_next()
        except BaseException as exc:
            task = context.app.tasks.get(name)
            retry = (
                task is not None
                and isinstance(exc, Exception)
                and (task.get_retry_exception(exception=exc, job=context.job) is not None)
            )
            self.jobs.labels(name, "retry" if retry else "failed").inc()
            raise
        finally:
            self.seconds.labels(name).observe(time.perf_counter() - started)
        self.jobs.labels(name, "succeeded").inc()
        return result

    async def refresh(self, queue: JobQueue, *, every_s: float = 15) -> None:
        """Keep the queue snapshot current (a scrape must not wait on the database)."""
        while True:
            try:
                self.snapshot = await queue.stats()
            except Exception as exc:  # the database away, not migrated: keep the last snapshot
                log.debug("job queue stats unavailable: %s", exc)
            await asyncio.sleep(every_s)
