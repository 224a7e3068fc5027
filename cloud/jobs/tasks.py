"""The background tasks and their schedule, registered on a procrastinate ``App`` by
``register``. Each task is a thin shell: it takes the process's services from the job context
and calls the module that does the work.

| task                        | queue   | when                                             |
|-----------------------------|---------|--------------------------------------------------|
| process_sensor_data         | default | hourly at :05                                    |
| check_automation_rules      | default | every 5 min                                      |
| schedule_ai_recommendations | default | ``ai.schedule`` (every 4 h)                      |
| generate_ai_recommendations | ai      | per active room from the above; on request       |
| process_alerts              | default | every minute; at once on an edge alert           |
| send_notification           | notify  | per delivery, from process_alerts                |
| cleanup_old_data            | default | daily at 03:30 UTC                               |
| make_partitions             | default | hourly at :20                                    |
| predict_yield               | default | daily at 04:15 UTC; after a harvest or substrate |
| retry_stalled_jobs          | default | every 5 min                                      |

Periodic jobs are deferred by every running worker, but procrastinate records each tick once
(``procrastinate_periodic_defers``), and queueing locks keep one of each waiting at a time. A job
left running by a worker that died (SIGKILL, lost machine) is queued again by
retry_stalled_jobs once that worker's heartbeat is STALLED_S old: jobs run at least once, so
tasks are written to be idempotent (webhook receivers de-duplicate by X-Smartfarm-Delivery).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import procrastinate
from procrastinate import JobContext, RetryStrategy

from cloud.ai.provider import ProviderError
from cloud.ai.recommend import generate
from cloud.ai.yields import predict_yield as predict_all
from cloud.config import CloudSettings
from cloud.errors import DatabaseUnavailable
from cloud.jobs.checks import check_automation_rules as run_checks
from cloud.jobs.derived import process_sensor_data as derive
from cloud.jobs.partitions import make_partitions as ensure_partitions
from cloud.jobs.retention import cleanup_old_data as cleanup
from cloud.jobs.services import JobServices, services_of
from cloud.jobs.settings import JobsConfig
from cloud.notify.delivery import DeliveryFailed
from cloud.notify.dispatch import send_notification as dispatch
from cloud.notify.episodes import Episodes

log = logging.getLogger(__name__)

# A worker's heartbeat is refreshed every 10 s: two minutes without one means it is gone.
STALLED_S = 120
ACTIVE_ROOMS = """
SELECT DISTINCT farm_id, room_id FROM sensor_latest WHERE time > now() - interval '24 hours'
ORDER BY farm_id, room_id"""


class TransientError(Exception):
    """Worth retrying later: a remote service throttled or was unreachable."""


# What a retry may fix; anything else (a bug, bad data) fails the job at once.
RETRYABLE: tuple[type[Exception], ...] = (DatabaseUnavailable, TransientError, OSError)


def _now(timestamp: int | None) -> datetime:
    """A periodic job's scheduled tick (so a late run computes for its own time), else now."""
    if timestamp is not None:
        return datetime.fromtimestamp(timestamp, UTC)
    return datetime.now(UTC)


async def process_sensor_data(context: JobContext, timestamp: int | None = None) -> Any:
    s = services_of(context)
    return await derive(
        s.db, now=_now(timestamp), lookback_hours=s.settings.jobs.derived_lookback_hours
    )


async def check_automation_rules(context: JobContext, timestamp: int | None = None) -> Any:
    s = services_of(context)
    return await run_checks(s.db, s.queue, s.settings.jobs, now=datetime.now(UTC))


async def schedule_ai_recommendations(context: JobContext, timestamp: int | None = None) -> Any:
    """Queue a run for every room that reported in the last 24 h (one per room at most)."""
    s = services_of(context)
    queued = 0
    for row in await s.db.fetch_all(ACTIVE_ROOMS):
        key = f"ai:{row['farm_id']}:{row['room_id']}"
        job = await s.queue.defer(
            "generate_ai_recommendations",
            lock=key,
            queueing_lock=key,
            room_id=row["room_id"],
            farm_id=row["farm_id"],
            trigger="schedule",
        )
        queued += job is not None
    return {"queued": queued}


async def generate_ai_recommendations(
    context: JobContext,
    room_id: str,
    trigger: str = "request",
    requested_by: int | None = None,
    farm_id: str = "",  # room ids are per farm; a job queued before migration 0011 has none
) -> Any:
    s = services_of(context)
    try:
        return await generate(
            s.db,
            s.provider,
            s.settings.ai,
            room_id,
            farm_id=farm_id,
            trigger=trigger,
            requested_by=requested_by,
            now=datetime.now(UTC),
        )
    except ProviderError as exc:
        if exc.transient:
            raise TransientError(str(exc)) from exc
        raise


async def process_alerts(context: JobContext, timestamp: int | None = None) -> Any:
    s = services_of(context)
    episodes = Episodes(
        s.db, s.queue, s.settings.notify, email_possible=s.settings.notify.smtp.enabled
    )
    return await episodes.run(now=datetime.now(UTC))


async def send_notification(context: JobContext, delivery_id: int) -> Any:
    s = services_of(context)
    last = context.job.attempts + 1 >= s.settings.jobs.max_attempts
    try:
        return await dispatch(s.db, s.settings.notify, delivery_id, last_attempt=last)
    except DeliveryFailed as exc:
        raise TransientError(str(exc)) from exc


async def cleanup_old_data(context: JobContext, timestamp: int | None = None) -> Any:
    s = services_of(context)
    return await cleanup(
        s.db,
        s.queue,
        s.settings.jobs,
        now=_now(timestamp),
        history_days=s.settings.jobs.notification_retention_days,
    )


async def make_partitions(context: JobContext, timestamp: int | None = None) -> Any:
    s = services_of(context)
    return await ensure_partitions(s.db, now=_now(timestamp))


async def predict_yield(
    context: JobContext,
    timestamp: int | None = None,
    room_id: str | None = None,
    farm_id: str | None = None,
) -> Any:
    s = services_of(context)
    now = datetime.now(UTC)
    return {"rooms": await predict_all(s.db, now=now, room_id=room_id, farm_id=farm_id)}


async def retry_stalled_jobs(context: JobContext, timestamp: int | None = None) -> Any:
    manager = context.app.job_manager
    stalled = list(await manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_S))
    for job in stalled:
        log.warning(
            "job %s (%s) was left running by a dead worker: queued again", job.id, job.task_name
        )
        await manager.retry_job(job)
    return {"retried": len(stalled)}


@dataclass(frozen=True)
class TaskSpec:
    func: Callable[..., Awaitable[Any]]
    queue: str = "default"
    cron: str | None = None
    # One waiting at a time (a periodic tick finding one still queued is dropped).
    single: bool = False
    retry: bool = True

    @property
    def name(self) -> str:
        return self.func.__name__


def schedule(settings: CloudSettings) -> list[TaskSpec]:
    """Every task with its queue and cron (``ai.schedule`` comes from the config)."""
    return [
        TaskSpec(process_sensor_data, cron="5 * * * *", single=True),
        TaskSpec(check_automation_rules, cron="*/5 * * * *", single=True),
        TaskSpec(schedule_ai_recommendations, cron=settings.ai.schedule, single=True),
        TaskSpec(generate_ai_recommendations, queue="ai"),
        TaskSpec(process_alerts, cron="* * * * *", single=True),
        TaskSpec(send_notification, queue="notify"),
        TaskSpec(cleanup_old_data, cron="30 3 * * *", single=True),
        TaskSpec(make_partitions, cron="20 * * * *", single=True),
        TaskSpec(predict_yield, cron="15 4 * * *"),
        TaskSpec(retry_stalled_jobs, cron="*/5 * * * *", single=True, retry=False),
    ]


def register(app: procrastinate.App, settings: CloudSettings) -> procrastinate.App:
    """Add every task (and, when ``jobs.periodic``, its schedule) to ``app``."""
    config: JobsConfig = settings.jobs
    retry = RetryStrategy(
        max_attempts=config.max_attempts,
        exponential_wait=config.retry_base_s,
        retry_exceptions=RETRYABLE,
    )
    for spec in schedule(settings):
        lock = spec.name if spec.single else None
        task = app.task(
            name=spec.name,
            queue=spec.queue,
            pass_context=True,
            retry=retry if spec.retry else False,
            queueing_lock=lock,
        )(spec.func)
        if spec.cron and config.periodic:
            app.periodic(cron=spec.cron, periodic_id=spec.name)(task)
    return app


def build_app(settings: CloudSettings) -> procrastinate.App:
    """A procrastinate App with our tasks, not yet opened (``cloud.jobs.queue.open_queue``)."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(),
        periodic_defaults={"max_delay": settings.jobs.periodic_max_delay_s},
    )
    return register(app, settings)


__all__ = ["RETRYABLE", "JobServices", "TaskSpec", "TransientError", "build_app", "register"]
