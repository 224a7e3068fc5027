"""The job queue as the rest of the cloud sees it: defer a task by name (optionally inside the
caller's transaction, optionally de-duplicated), ask what is waiting or running, count jobs.

A thin wrapper over a procrastinate ``App``; the tasks themselves are registered by
``cloud.jobs.tasks.register``. Queue state is read through the cloud's own database gateway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc
from psycopg_pool import AsyncConnectionPool

from cloud.db.database import Cursor, Database

log = logging.getLogger(__name__)

QUEUES = ("default", "ai", "notify")

# What is waiting or running under a lock (the newest first).
HELD = """
SELECT id, status::text AS status FROM procrastinate_jobs
WHERE lock = %(lock)s AND status IN ('todo', 'doing') ORDER BY (status = 'doing') DESC, id DESC
LIMIT 1"""
STATS = """
SELECT
    count(*) FILTER (WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now()))
        AS todo,
    count(*) FILTER (WHERE status = 'todo' AND scheduled_at > now()) AS scheduled,
    count(*) FILTER (WHERE status = 'doing') AS doing,
    extract(epoch FROM now() - min(coalesce(scheduled_at, e.at))
        FILTER (WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())))
        AS oldest_todo_s
FROM procrastinate_jobs j
LEFT JOIN LATERAL (
    SELECT at FROM procrastinate_events ev WHERE ev.job_id = j.id AND ev.type = 'deferred'
    ORDER BY ev.id LIMIT 1
) e ON true
WHERE status IN ('todo', 'doing')"""
# Final failures ('failed') and failed attempts that will run again ('deferred_for_retry').
FAILED = """
SELECT j.task_name, ev.type::text AS type, count(*) AS n FROM procrastinate_jobs j
JOIN procrastinate_events ev ON ev.job_id = j.id
WHERE ev.type IN ('failed', 'deferred_for_retry') AND ev.at > now() - interval '24 hours'
GROUP BY 1, 2 ORDER BY 1, 2"""
WORKERS = """
SELECT count(*) AS alive FROM procrastinate_workers
WHERE last_heartbeat > now() - make_interval(secs => %(within)s)"""


@dataclass(frozen=True)
class Deferred:
    """The outcome of a de-duplicated defer: the job that will do the work, and whether it was
    already there (``status`` todo: waiting, doing: running)."""

    job_id: int
    status: str
    duplicate: bool


class JobQueue:
    """Defers jobs and reads queue state. Open with ``open_queue``; tasks are looked up by name,
    so the caller needs no import of the task functions."""

    def __init__(self, app: procrastinate.App, db: Database, pool: AsyncConnectionPool) -> None:
        self.app = app
        self.db = db
        self.pool = pool

    async def close(self) -> None:
        await self.app.close_async()
        await self.pool.close(timeout=5)

    async def defer(
        self,
        task: str,
        *,
        cur: Cursor | None = None,
        lock: str | None = None,
        queueing_lock: str | None = None,
        schedule_at: datetime | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> int | None:
        """Queue ``task(**kwargs)``; its id, or None when ``queueing_lock`` already has a job
        waiting. With ``cur`` the job is inserted in the caller's transaction: it exists exactly
        when the caller's writes commit (a savepoint keeps a duplicate from aborting them)."""
        deferrer = self.app.configure_task(
            task,
            allow_unknown=False,
            lock=lock,
            queueing_lock=queueing_lock,
            schedule_at=schedule_at,
            priority=priority,
            connection=cur.connection if cur is not None else None,
        )
        try:
            if cur is None:
                return await deferrer.defer_async(**kwargs)
            async with cur.connection.transaction():  # a savepoint inside the caller's
                return await deferrer.defer_async(**kwargs)
        except pexc.AlreadyEnqueued:
            log.debug("%s already queued under %s", task, queueing_lock)
            return None

    async def defer_once(self, task: str, *, key: str, **kwargs: Any) -> Deferred:
        """Queue ``task`` unless one with the same ``key`` is waiting or running (then that one
        is the answer). ``key`` is both the queueing lock (one waiting) and the lock (one
        running): two requests never run the work twice at once."""
        held = await self.held(key)
        if held is not None:
            return Deferred(held[0], held[1], duplicate=True)
        job_id = await self.defer(task, lock=key, queueing_lock=key, **kwargs)
        if job_id is not None:
            return Deferred(job_id, "todo", duplicate=False)
        held = await self.held(key)  # lost a race with another request: report theirs
        if held is None:  # …which already finished: queue ours after all
            job_id = await self.defer(task, lock=key, queueing_lock=key, **kwargs)
            return Deferred(job_id or 0, "todo", duplicate=job_id is None)
        return Deferred(held[0], held[1], duplicate=True)

    async def held(self, lock: str) -> tuple[int, str] | None:
        row = await self.db.fetch_one(HELD, {"lock": lock})
        return (int(row["id"]), str(row["status"])) if row else None

    async def stats(self, *, alive_within_s: float = 60) -> dict[str, Any]:
        """Queue depth, running jobs, failures and retries in 24 h by task, live workers."""
        async with self.db.transaction() as cur:
            await cur.execute(STATS)
            counts = await cur.fetchone() or {}
            await cur.execute(FAILED)
            failures = await cur.fetchall()
            await cur.execute(WORKERS, {"within": alive_within_s})
            workers = await cur.fetchone() or {}
        oldest = counts.get("oldest_todo_s")
        return {
            "todo": int(counts.get("todo") or 0),
            "scheduled": int(counts.get("scheduled") or 0),
            "doing": int(counts.get("doing") or 0),
            "oldest_todo_s": round(float(oldest), 1) if oldest is not None else None,
            "failed_24h": {r["task_name"]: int(r["n"]) for r in failures if r["type"] == "failed"},
            "retried_24h": {r["task_name"]: int(r["n"]) for r in failures if r["type"] != "failed"},
            "workers": int(workers.get("alive") or 0),
        }


async def open_queue(app: procrastinate.App, db: Database, *, max_size: int = 4) -> JobQueue:
    """Open ``app`` on a pool of its own to the same database (procrastinate's LISTEN
    connection copies the pool's connection settings, which must leave autocommit to it);
    connections are made on demand, so a process that only defers holds none idle."""
    pool = AsyncConnectionPool(
        db.dsn,
        min_size=0,
        max_size=max_size,
        open=False,
        name="smartfarm-jobs",
        kwargs={"options": "-c statement_timeout=30000"},
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open()
    await app.open_async(pool)
    return JobQueue(app, db, pool)
