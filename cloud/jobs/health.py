"""The job queue's part of /health: counts only (the endpoint is public)."""

from __future__ import annotations

import logging
from typing import Any, Literal

from aiohttp import web

from cloud import appkeys

log = logging.getLogger(__name__)

# Due jobs waiting this long with no live worker: nobody is working the queue.
STALLED_S = 300


async def job_health(
    app: web.Application,
) -> tuple[Literal["ok", "down", "not configured"], dict[str, Any] | None]:
    """("ok" | "down" | "not configured", queue counts or None)."""
    queue = app.get(appkeys.JOBS)
    if queue is None:
        return "not configured", None
    try:
        stats = await queue.stats()
    except Exception as exc:  # the tables or the database are away: the queue is down
        log.debug("job queue stats: %s", exc)
        return "down", None
    counts = {
        "waiting": stats["todo"],
        "scheduled": stats["scheduled"],
        "running": stats["doing"],
        "oldest_waiting_s": stats["oldest_todo_s"],
        "workers": stats["workers"],
        "failed_24h": sum(stats["failed_24h"].values()),
        "retried_24h": sum(stats["retried_24h"].values()),
    }
    worker = app.get(appkeys.JOB_WORKER)
    if worker is not None and worker.done():
        return "down", counts  # the in-process worker stopped (it logged why)
    if stats["workers"] == 0 and (stats["oldest_todo_s"] or 0) > STALLED_S:
        return "down", counts
    return "ok", counts
