"""A job environment on a fresh copy of the test world: the database, the job queue and the
services a worker hands its tasks, and ``work()`` to run every due job with a real worker.

Import ``jobs_env_fixture`` into a test module (``# noqa: F401``), then ask for ``jobs_env``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cloud.ai.configured import make_provider
from cloud.ai.provider import Provider
from cloud.config import CloudSettings
from cloud.db.database import Database
from cloud.jobs.metrics import JobMetrics
from cloud.jobs.queue import JobQueue, open_queue
from cloud.jobs.services import JobServices
from cloud.jobs.tasks import build_app
from cloud.jobs.worker import run_worker
from tests.cloud.conftest import make_settings

# Retries at once (no backoff wait), few attempts: a test's worker sees a retry in the same run.
JOBS = {"in_process_worker": False, "periodic": False, "retry_base_s": 0, "max_attempts": 3}


@dataclass
class JobsEnv:
    db: Database
    queue: JobQueue
    services: JobServices
    metrics: JobMetrics | None = None
    ran: list[str] = field(default_factory=list)

    @property
    def settings(self) -> CloudSettings:
        return self.services.settings

    async def work(self, *, concurrency: int = 1) -> None:
        """Run jobs until none is due (including the ones jobs queue for each other)."""
        await run_worker(
            self.queue,
            self.services,
            metrics=self.metrics,
            name="test",
            concurrency=concurrency,
            wait=False,
            listen_notify=False,
        )

    async def jobs(self, task: str | None = None, status: str | None = None) -> list[Any]:
        return list(await self.queue.app.job_manager.list_jobs_async(task=task, status=status))


MakeEnv = Callable[..., Awaitable[JobsEnv]]


@pytest.fixture(name="jobs_env")
async def jobs_env_fixture(world_dsn: str, tmp_path: Path) -> AsyncIterator[MakeEnv]:
    """A factory: ``await jobs_env(notify={...}, provider=...)`` (settings sections as keywords)."""
    opened: list[tuple[Database, JobQueue]] = []

    async def make(*, provider: Provider | None = None, **sections: Any) -> JobsEnv:
        jobs = {**JOBS, **sections.pop("jobs", {})}
        settings = make_settings(world_dsn, tmp_path, jobs=jobs, **sections)
        db = await Database.connect(world_dsn, min_size=1, max_size=6)
        queue = await open_queue(build_app(settings), db)
        opened.append((db, queue))
        services = JobServices(db, settings, queue, provider or make_provider(settings.ai))
        return JobsEnv(db=db, queue=queue, services=services)

    yield make
    for db, queue in opened:
        await queue.close()
        await db.close()
