"""Telling the dashboards of every instance about the readings edge batches stored: an instance
gathers what its batches stored over a short window and announces it in one NOTIFY transaction.

Announcing each batch on its own cost a transaction of four statements per batch (BEGIN, the
setting that spares its commit the WAL flush, NOTIFY, COMMIT): with 1,000 edges sending a batch
every 2 s, a fifth of the cloud's CPU per batch and a commit more for PostgreSQL. Gathered, the
same notifications cost one transaction per window, and a dashboard sees a reading at most a
window later. Only committed readings are added (``add`` is called after the batch's COMMIT),
so nothing that was rolled back is ever shown. Announcing is best effort, as it always was: a
failed NOTIFY loses a window's live updates (the page's next snapshot has them), never a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cloud.db import live as live_db
from cloud.db import sync as sync_db
from cloud.db.database import Database
from cloud.db.telemetry import Reading
from cloud.errors import CloudError

log = logging.getLogger(__name__)

WINDOW_S = 0.1


class ReadingAnnouncer:
    """Owned by the instance's edge sync; ``run()`` announces every ``window_s`` until
    cancelled."""

    def __init__(self, db: Database, *, window_s: float = WINDOW_S) -> None:
        self._db = db
        self._window_s = window_s
        self._pending: dict[str, list[Reading]] = {}
        self._added = asyncio.Event()

    def add(self, farm_id: str, readings: list[Reading]) -> None:
        """Announce ``readings`` (just committed) with the next window's."""
        if not readings:
            return
        self._pending.setdefault(farm_id, []).extend(readings)
        self._added.set()

    async def run(self) -> None:
        while True:
            await self._added.wait()
            await asyncio.sleep(self._window_s)  # let the window's other batches join
            await self.flush()

    async def flush(self) -> None:
        """Announce what was added so far."""
        self._added.clear()
        pending, self._pending = self._pending, {}
        if not pending:
            return
        now = time.time()
        payloads = [
            payload
            for farm_id, readings in pending.items()
            for payload in live_db.reading_payloads(farm_id, readings, now)
        ]
        try:
            await sync_db.notify_live(self._db, payloads)
        except CloudError as exc:
            log.warning("could not announce %d farms' new readings: %s", len(pending), exc.detail)
