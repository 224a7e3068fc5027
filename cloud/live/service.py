"""Wiring of the live dashboard into the app: the hub as a background task (after the database),
and every socket closed when the server shuts down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from cloud import appkeys
from cloud.live.hub import LiveHub

LIVE = web.AppKey("live", LiveHub)


async def _live_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    hub = LiveHub(
        app[appkeys.DB],
        settings.live,
        app[appkeys.METRICS].registry,
        online_window_s=settings.sync.online_window_s,
    )
    app[LIVE] = hub
    task = asyncio.create_task(hub.run(), name="live-hub")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _close_sockets(app: web.Application) -> None:
    hub = app.get(LIVE)
    if hub is not None:
        await hub.close()


def setup_live(app: web.Application) -> None:
    """Call from ``init_app`` after the database's cleanup context."""
    app.cleanup_ctx.append(_live_ctx)
    app.on_shutdown.append(_close_sockets)
