"""Running workers: inside the API process (``jobs_ctx``, the default) or as their own process
(``smartfarm cloud worker``, any number on any machine). Both open the job queue on the
process's psycopg pool and hand tasks the same services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterable

from aiohttp import web

from cloud import appkeys
from cloud.ai.configured import make_provider
from cloud.config import CloudSettings
from cloud.db.database import Database
from cloud.jobs.metrics import JobMetrics
from cloud.jobs.queue import QUEUES, JobQueue, open_queue
from cloud.jobs.schema import missing_upstream_migrations
from cloud.jobs.services import KEY, JobServices
from cloud.jobs.tasks import build_app

log = logging.getLogger(__name__)


async def run_worker(
    queue: JobQueue,
    services: JobServices,
    *,
    metrics: JobMetrics | None = None,
    name: str | None = None,
    queues: Iterable[str] | None = None,
    concurrency: int | None = None,
    wait: bool = True,
    install_signal_handlers: bool = False,
    listen_notify: bool = True,
) -> None:
    """Run jobs until cancelled (or, with ``wait=False``, until none is due)."""
    config = services.settings.jobs
    await queue.app.run_worker_async(
        name=name or f"{socket.gethostname()}-{os.getpid()}",
        queues=list(queues or ()) or None,  # type: ignore[arg-type]  # None: every queue
        concurrency=concurrency or config.concurrency,
        wait=wait,
        install_signal_handlers=install_signal_handlers,
        listen_notify=listen_notify,
        shutdown_graceful_timeout=config.shutdown_grace_s,
        additional_context={KEY: services},
        worker_middleware=[metrics.middleware] if metrics is not None else [],
    )


def _warn_schema() -> None:
    missing = missing_upstream_migrations()
    if missing:
        log.error(
            "procrastinate ships schema migrations our migrations lack: %s (see "
            "cloud/jobs/schema.py)",
            ", ".join(missing),
        )


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """The API's job queue (to defer jobs), queue metrics, and — unless
    ``jobs.in_process_worker`` is off — a worker in this process. Needs the database."""
    settings = app[appkeys.SETTINGS]
    db = app[appkeys.DB]
    queue = await open_queue(build_app(settings), db, max_size=settings.jobs.concurrency + 3)
    app[appkeys.JOBS] = queue
    metrics = JobMetrics(app[appkeys.METRICS].registry)
    tasks = [asyncio.create_task(metrics.refresh(queue), name="job-stats")]
    if settings.jobs.in_process_worker:
        _warn_schema()
        services = JobServices(db, settings, queue, make_provider(settings.ai))
        worker = asyncio.create_task(
            run_worker(queue, services, metrics=metrics, name="in-process"), name="job-worker"
        )
        app[appkeys.JOB_WORKER] = worker
        tasks.append(worker)
        log.info("job worker running in this process (jobs.in_process_worker)")
    try:
        yield
    finally:
        # The worker first: it finishes its running jobs (up to shutdown_grace_s) and
        # unregisters; bounded, so a database that went away cannot hold the shutdown.
        for task in reversed(tasks):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=settings.jobs.shutdown_grace_s + 5)
            if done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
            else:
                log.warning("%s did not stop in time", task.get_name())
        await queue.close()


async def worker_main(
    settings: CloudSettings, *, queues: list[str] | None, concurrency: int | None
) -> int:
    """``smartfarm cloud worker``: a worker process until SIGINT/SIGTERM (finishing its jobs)."""
    from cloud.db.embedded import resolve_dsn
    from cloud.db.migrate import migrate

    unknown = sorted(set(queues or ()) - set(QUEUES))
    if unknown:
        log.error("unknown queue(s) %s; queues are %s", ", ".join(unknown), ", ".join(QUEUES))
        return 2
    dsn, embedded = await resolve_dsn(settings)
    try:
        if settings.migrate_on_start:
            await migrate(dsn)
        workers = concurrency or settings.jobs.concurrency
        db = await Database.connect(
            dsn,
            min_size=1,
            max_size=max(settings.database.pool_max, workers + 2),
            connect_timeout=settings.database.connect_timeout_s,
        )
        try:
            queue = await open_queue(build_app(settings), db, max_size=workers + 3)
            _warn_schema()
            services = JobServices(db, settings, queue, make_provider(settings.ai))
            log.info("worker on queues %s, %d at a time", ", ".join(queues or QUEUES), workers)
            try:
                await run_worker(
                    queue,
                    services,
                    queues=queues,
                    concurrency=workers,
                    install_signal_handlers=True,
                )
            finally:
                await queue.close()
        finally:
            await db.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    return 0
