"""One browser's socket: what it subscribed to, a bounded queue of messages, and the task that
writes them. The hub only ever ``push``es (never awaits a client), so one slow browser can
neither stall the hub nor the others: it is dropped when its queue overflows or a send blocks
too long."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiohttp import web

from cloud.auth.access import User
from cloud.live.events import CLOSE_TOO_SLOW

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0


@dataclass
class FarmSubscription:
    """What a client watches in one farm: the whole farm or some rooms, within its grants."""

    whole_farm: bool = False
    rooms: set[str] = field(default_factory=set)
    # None: every room of the farm may be seen; else only these (room-level grants).
    allowed: frozenset[str] | None = None

    def wants(self, room_id: str | None) -> bool:
        if room_id is None:  # farm-wide news (edge online/offline)
            return True
        if self.allowed is not None and room_id not in self.allowed:
            return False
        return self.whole_farm or room_id in self.rooms

    @property
    def empty(self) -> bool:
        return not self.whole_farm and not self.rooms


class LiveClient:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        user: User,
        *,
        queue_size: int,
    ) -> None:
        self.ws = ws
        self.request = request
        self.user = user
        self.subs: dict[str, FarmSubscription] = {}
        self.closed = False
        self.close_code: int | None = None
        self.sent = 0
        # Kept now: once closing starts, the request may no longer hand out its transport.
        self._transport = request.transport
        # Loop time when the current send started (None: idle); the hub's watchdog drops a
        # client whose send has been blocked longer than send_timeout_s.
        self.sending_since: float | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<LiveClient user={self.user.id} farms={sorted(self.subs)}>"

    def wants(self, farm_id: str, room_id: str | None) -> bool:
        sub = self.subs.get(farm_id)
        return sub is not None and sub.wants(room_id)

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name="live-client-write")

    def push(self, text: str) -> None:
        """Queue a message; drop the client when it is too far behind."""
        if self.closed:
            return
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("live client of user %d fell %d messages behind: dropped",
                        self.user.id, self._queue.qsize())
            self.drop(CLOSE_TOO_SLOW, "too slow")

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            text = await self._queue.get()
            self.sending_since = loop.time()
            await self.ws.send_str(text)
            self.sending_since = None
            self.sent += 1

    def drop(self, code: int, reason: str) -> None:
        """Stop sending and close the socket with ``code`` (in the background, bounded)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        if self._writer is not None:
            self._writer.cancel()
        self._closer = asyncio.create_task(self._close(code, reason), name="live-client-close")

    async def _close(self, code: int, reason: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TIMEOUT_S
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        except asyncio.CancelledError:
            # aiohttp's drain future is shared with the writer task, cancelled a moment ago:
            # that cancellation surfaces here. Only a cancel of this task is ours to obey.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        # A client that stopped reading never takes the rest of its data (nor the close frame),
        # and a plain close of the transport waits to flush it: forever. Cut the connection.
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            await asyncio.sleep(max(0.1, deadline - loop.time()))
            if transport.get_write_buffer_size():
                transport.abort()

    async def finish(self) -> None:
        """After the socket is done: stop the writer, let a pending close run out."""
        self.closed = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        if self._closer is not None:
            with contextlib.suppress(Exception):
                await self._closer
