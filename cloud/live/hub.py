"""The fan-out of one cloud instance: NOTIFY in, browser messages out.

One LISTEN connection per instance hears every change committed on any instance (readings from
the batch writer; commands, device status, alerts, membership from migration 0009's triggers;
recommendations and notifications from 0008's). Readings carry their values and go straight to
the per-device coalescer; other notices name a row, fetched once per instance (and only when
someone here watches that farm) by one sequential fetcher, so a change's steps keep their order.
Messages are serialised once and pushed to each interested client's bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud.auth.access import Access, decide
from cloud.db import access as access_db
from cloud.db import live as live_db
from cloud.db.database import Database
from cloud.errors import CloudError, NotFound, ValidationFailed
from cloud.live.client import FarmSubscription, LiveClient
from cloud.live.coalesce import Coalescer, DeviceReading
from cloud.live.events import (
    CHANNELS,
    CLOSE_FORBIDDEN,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    Notice,
    message,
    parse_notice,
    reading_message,
    row_message,
)
from cloud.live.settings import LiveConfig
from shared.backoff import Backoff

log = logging.getLogger(__name__)

FETCH_QUEUE = 10_000
# The row a notice names, by kind (None when it is gone by the time it is read). Commands and
# devices are named by id within their farm (ids are per farm).
Fetcher = Callable[[Database, str, Any], Awaitable[dict[str, Any] | None]]
ROW_FETCHERS: dict[str, Fetcher] = {
    "command": lambda db, farm, ident: live_db.command(db, farm, str(ident)),
    "status": lambda db, farm, ident: live_db.status(db, farm, str(ident)),
    "alert": lambda db, farm, ident: live_db.alert(db, int(ident)),
    "recommendation": lambda db, farm, ident: live_db.recommendation(db, int(ident)),
    "notification": lambda db, farm, ident: live_db.notification(db, int(ident)),
}


class LiveMetrics:
    def __init__(self, registry: CollectorRegistry, clients: Any) -> None:
        gauge = Gauge("smartfarm_live_clients", "dashboard sockets open here", registry=registry)
        gauge.set_function(clients)
        self.notices = Counter(
            "smartfarm_live_notices", "NOTIFYs received, by kind", ["kind"], registry=registry
        )
        self.messages = Counter(
            "smartfarm_live_messages", "messages queued to dashboard sockets", registry=registry
        )
        self.closed = Counter(
            "smartfarm_live_closed", "dashboard sockets closed by the server, by close code",
            ["code"],
            registry=registry,
        )


class LiveHub:
    def __init__(
        self,
        db: Database,
        config: LiveConfig,
        registry: CollectorRegistry,
        *,
        online_window_s: float,
    ) -> None:
        self.db = db
        self.config = config
        self.online_window_s = online_window_s
        self.metrics = LiveMetrics(registry, self.clients)
        self.listening = asyncio.Event()  # set while LISTEN is active (tests wait for it)
        self._by_farm: dict[str, set[LiveClient]] = {}
        self._by_user: dict[int, set[LiveClient]] = {}
        self._all: set[LiveClient] = set()
        self._coalescer = Coalescer(config.reading_rate_hz, self._send_reading)
        self._fetches: asyncio.Queue[Notice] = asyncio.Queue(maxsize=FETCH_QUEUE)
        self._missed = False  # a notice was dropped on a full fetch queue: resync when drained
        self._edges: dict[str, bool] = {}  # edge id → online, as last told

    # ---- clients and subscriptions ----
    def clients(self) -> int:
        return len(self._all)

    def add(self, client: LiveClient) -> None:
        self._all.add(client)
        self._by_user.setdefault(client.user.id, set()).add(client)

    def remove(self, client: LiveClient) -> None:
        if client.close_code is not None:
            self.metrics.closed.labels(str(client.close_code)).inc()
        self._all.discard(client)
        _discard(self._by_user, client.user.id, client)
        for farm_id in list(client.subs):
            _discard(self._by_farm, farm_id, client)
        client.subs.clear()

    async def subscribe(
        self, client: LiveClient, farm_id: str | None, room_id: str | None
    ) -> dict[str, Any]:
        """Authorize (as every API call: strangers get not-found) and add a subscription."""
        user = client.user
        what = "room" if room_id is not None else "farm"
        ident = room_id if room_id is not None else farm_id
        if ident is None:
            raise ValidationFailed(
                [{"field": "farm_id", "message": "give farm_id or room_id", "type": "missing"}]
            )
        rows = await access_db.locate_all(
            self.db, what, ident, user.id, farm_id=farm_id, is_admin=user.is_admin
        )
        if len(rows) > 1:  # a room id in several of the caller's farms (ids are per farm)
            rows = [r for r in rows if _visible(what, r, user.is_admin)]
            if len(rows) > 1:
                raise ValidationFailed(
                    [
                        {
                            "field": "farm_id",
                            "message": "this room id is in more than one of your farms:"
                            " give farm_id",
                            "type": "missing",
                        }
                    ]
                )
        access = _decide(what, rows[0] if rows else None, user.is_admin)
        if farm_id is not None and access.farm_id != farm_id:
            raise NotFound("room not found")
        sub = client.subs.get(access.farm_id) or FarmSubscription()
        count = sum(len(s.rooms) + s.whole_farm for s in client.subs.values())
        if count >= self.config.max_subscriptions:
            raise ValidationFailed(
                [{"field": "room_id", "message": "too many subscriptions", "type": "too_many"}]
            )
        sub.allowed = access.room_ids
        if room_id is None:
            sub.whole_farm = True
        else:
            sub.rooms.add(room_id)
        client.subs[access.farm_id] = sub
        self._by_farm.setdefault(access.farm_id, set()).add(client)
        rooms = sorted(access.room_ids) if access.room_ids is not None else None
        return {"farm_id": access.farm_id, "room_id": room_id, "role": access.role,
                "rooms": rooms}

    def unsubscribe(self, client: LiveClient, farm_id: str | None, room_id: str | None) -> bool:
        for fid, sub in list(client.subs.items()):
            if farm_id is not None and fid != farm_id:
                continue
            if room_id is None:
                if farm_id is None:
                    continue
                sub.whole_farm = False
                sub.rooms.clear()
            elif room_id in sub.rooms:
                sub.rooms.discard(room_id)
            else:
                continue
            if sub.empty:
                del client.subs[fid]
                _discard(self._by_farm, fid, client)
            return True
        return False

    # ---- fan-out ----
    def _fanout(self, farm_id: str | None, room_id: str | None, text: str) -> None:
        if farm_id is None:
            return
        clients = self._by_farm.get(farm_id)
        if not clients:
            return
        n = 0
        for client in tuple(clients):
            if client.wants(farm_id, room_id):
                client.push(text)
                n += 1
        self.metrics.messages.inc(n)

    def broadcast(self, text: str) -> None:
        for client in tuple(self._all):
            client.push(text)

    def _send_reading(self, r: DeviceReading) -> None:
        text = reading_message(r.farm_id, r.room_id, r.device_id, r.time, r.values, r.ingested_at)
        self._fanout(r.farm_id, r.room_id, text)

    def _watched(self, farm_id: str | None) -> bool:
        return farm_id is not None and bool(self._by_farm.get(farm_id))

    def on_notify(self, channel: str, payload: str) -> None:
        notice = parse_notice(channel, payload)
        if notice is None:
            return
        self.metrics.notices.labels(notice.kind).inc()
        if notice.kind == "readings":
            if not self._watched(notice.farm_id):
                return
            assert notice.farm_id is not None and notice.room_id is not None
            for device_id, (t, values) in notice.devices.items():
                self._coalescer.offer(
                    DeviceReading(notice.farm_id, notice.room_id, device_id, t, values, notice.at)
                )
            if not notice.fetch:
                return
        elif notice.kind in ("room", "automation"):  # nothing to fetch: pages reload the room
            self._fanout(notice.farm_id, notice.room_id,
                         message(notice.kind, farm_id=notice.farm_id, room_id=notice.room_id))
            return
        elif notice.kind == "recommendation":  # names only its room: fetched if anyone listens
            if not self._by_farm:
                return
        elif notice.kind in ("notification", "user", "signed_out", "access"):
            if notice.user_id not in self._by_user:
                return
        elif not self._watched(notice.farm_id):
            return
        try:
            self._fetches.put_nowait(notice)
        except asyncio.QueueFull:
            self._missed = True

    # ---- background work ----
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._listen(), name="live-listen")
            tasks.create_task(self._fetch_loop(), name="live-fetch")
            tasks.create_task(self._presence_loop(), name="live-presence")
            tasks.create_task(self._watchdog(), name="live-watchdog")

    async def _listen(self) -> None:
        """LISTEN until cancelled, reconnecting with jittered exponential backoff; after a
        reconnect every client is told to resync (notices may have been missed meanwhile)."""
        backoff = Backoff(0.5, 30.0)
        connected_before = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.db.dsn, autocommit=True
                ) as conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                    self.listening.set()
                    if connected_before:
                        log.info("live feed listening again; clients resynchronise")
                        self.broadcast(message("resync", reason="live feed reconnected"))
                    connected_before = True
                    backoff.reset()
                    async for notify in conn.notifies():
                        self.on_notify(notify.channel, notify.payload)
            except (psycopg.Error, OSError) as exc:
                delay = backoff.delay()
                log.warning("live LISTEN connection lost (%s); retrying in %.1f s", exc, delay)
            else:
                delay = backoff.delay()
            finally:
                self.listening.clear()
            await asyncio.sleep(delay)

    async def _fetch_loop(self) -> None:
        while True:
            notice = await self._fetches.get()
            try:
                await self._fetched(notice)
            except CloudError as exc:  # the database is away: this step is lost, say so
                log.warning("live: could not fetch %s %s: %s", notice.kind, notice.ident, exc)
                self._missed = True
            except Exception:
                log.exception("live: handling %s %s failed", notice.kind, notice.ident)
            if self._missed and self._fetches.empty():
                self._missed = False
                self.broadcast(message("resync", reason="some updates were missed"))

    async def _fetched(self, notice: Notice) -> None:
        kind = notice.kind
        if kind == "readings":
            await self._fetch_readings(notice)
        elif kind in ROW_FETCHERS:
            row = await ROW_FETCHERS[kind](self.db, notice.farm_id or "", notice.ident)
            if row is None:
                return
            text = row_message(kind, row, notice.status)
            if kind == "notification":  # to its user, wherever they look
                for client in tuple(self._by_user.get(row["user_id"], ())):
                    client.push(text)
            else:
                self._fanout(row["farm_id"], row["room_id"], text)
        elif kind == "access":
            assert notice.user_id is not None and notice.farm_id is not None
            await self.recheck(notice.user_id, notice.farm_id)
        elif kind == "user":
            for client in tuple(self._by_user.get(notice.user_id or 0, ())):
                client.drop(CLOSE_FORBIDDEN, "account disabled")
        elif kind == "signed_out":  # "sign out everywhere": its tokens no longer open anything
            for client in tuple(self._by_user.get(notice.user_id or 0, ())):
                client.drop(CLOSE_UNAUTHORIZED, "signed out everywhere")

    async def _fetch_readings(self, notice: Notice) -> None:
        """A device whose values did not fit in a NOTIFY: its newest reading from
        sensor_latest (the metrics stamped with its newest time, not older ones)."""
        rows = await live_db.latest_of(self.db, notice.farm_id or "", list(notice.fetch))
        newest: dict[str, Any] = {}
        for row in rows:
            newest[row["device_id"]] = max(row["time"], newest.get(row["device_id"], row["time"]))
        merged: dict[str, DeviceReading] = {}
        for row in rows:
            device_id = row["device_id"]
            if row["time"] != newest[device_id]:
                continue
            found = merged.get(device_id)
            if found is None:
                merged[device_id] = DeviceReading(
                    row["farm_id"], row["room_id"], device_id, row["time"].timestamp(),
                    {row["metric"]: row["value"]}, notice.at,
                )
            else:
                found.values[row["metric"]] = row["value"]
        for reading in merged.values():
            self._coalescer.offer(reading)

    async def recheck(self, user_id: int, farm_id: str) -> None:
        """A member's access to a farm changed: narrow or end their subscriptions to it."""
        clients = [c for c in self._by_user.get(user_id, ()) if farm_id in c.subs]
        if not clients:
            return
        row = await access_db.locate(self.db, "farm", farm_id, user_id)
        for client in clients:
            try:
                access: Access | None = _decide("farm", row, client.user.is_admin)
            except CloudError:
                access = None
            sub = client.subs.get(farm_id)
            if sub is None:
                continue
            if access is None:
                del client.subs[farm_id]
                _discard(self._by_farm, farm_id, client)
                client.push(message("unsubscribed", farm_id=farm_id, room_id=None,
                                    reason="access revoked"))
                continue
            sub.allowed = access.room_ids
            lost = sorted(r for r in sub.rooms if not sub.wants(r))
            for room_id in lost:
                self.unsubscribe(client, farm_id, room_id)
                client.push(message("unsubscribed", farm_id=farm_id, room_id=room_id,
                                    reason="access revoked"))

    async def _presence_loop(self) -> None:
        """Edges of watched farms going online or offline (last_seen within the window)."""
        while True:
            await asyncio.sleep(self.config.presence_poll_s)
            farms = [farm for farm, clients in self._by_farm.items() if clients]
            if not farms:
                self._edges.clear()
                continue
            try:
                rows = await live_db.edges(self.db, farms, window_s=self.online_window_s)
            except CloudError as exc:
                log.warning("live: edge presence unavailable: %s", exc)
                continue
            before, self._edges = self._edges, {r["id"]: r["online"] for r in rows}
            for row in rows:
                if before.get(row["id"]) != row["online"]:
                    text = message("edge", farm_id=row["farm_id"], edge_id=row["id"],
                                   name=row["name"], online=row["online"],
                                   last_seen=row["last_seen"])
                    self._fanout(row["farm_id"], None, text)

    async def _watchdog(self) -> None:
        """Drop clients whose current send has blocked too long; forget quiet devices."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for client in tuple(self._all):
                since = client.sending_since
                if (not client.closed and since is not None
                        and now - since > self.config.send_timeout_s):
                    log.warning("live client of user %d stopped reading: dropped",
                                client.user.id)
                    client.drop(CLOSE_TOO_SLOW, "too slow")
            self._coalescer.prune()

    async def close(self) -> None:
        """Server shutdown: close every socket (1001, going away)."""
        self._coalescer.close()
        for client in tuple(self._all):
            client.drop(1001, "server shutting down")
        for client in tuple(self._all):
            with contextlib.suppress(Exception):
                await client.finish()


def _decide(what: str, row: dict[str, Any] | None, is_admin: bool) -> Access:
    return decide(
        what=what,
        farm_id=row["farm_id"] if row else None,
        role=row["role"] if row else None,
        is_admin=is_admin,
        needed="viewer",
        room_id=row["room_id"] if row else None,
        all_rooms=bool(row["all_rooms"]) if row else True,
        granted_rooms=frozenset(row["granted"] or ()) if row else frozenset(),
    )


def _visible(what: str, row: dict[str, Any], is_admin: bool) -> bool:
    try:
        _decide(what, row, is_admin)
    except NotFound:
        return False
    return True


def _discard(index: dict[Any, set[LiveClient]], key: Any, client: LiveClient) -> None:
    clients = index.get(key)
    if clients is not None:
        clients.discard(client)
        if not clients:
            del index[key]
