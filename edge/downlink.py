"""The down channel: commands and versioned config from the cloud, over the edge's own WebSocket.

The edge connects out to ``{cloud.url}/api/edge/v1/stream`` (bearer token), says ``Hello`` and
handles what comes: a ``CloudCommand`` is carried out through the automation's manual path (so it
overrides automation like a command from the local page) with source "cloud", unless it is past
its ``expires_at`` or older than ``command_ttl_s`` ("expired"); a redelivered command is answered
again, never executed twice. A ``ConfigPush`` (rooms, stages, rules, devices) goes to
``edge.config_sync``, which validates it whole and applies it; the edge answers ``ConfigApplied``.
After repeated WebSocket failures the edge polls ``GET /api/edge/v1/pending`` instead (answers:
``POST`` there), and tries the WebSocket again every minute. Its health (backlog, software
version) goes up on the stream as an ``EdgeStatus`` every heartbeat, and while polling with a
poll once a heartbeat, as that poll's query parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
from pydantic import TypeAdapter, ValidationError

from edge.alerts import AlertMonitor
from edge.automation import Automation, InvalidRequest, NotFound
from edge.commands import CommandTracker
from edge.config import EdgeSettings
from edge.config_sync import ConfigSync
from edge.store import outbox as sync_rows
from edge.store.db import Database
from edge.uplink import refusal_message
from shared.backoff import Backoff
from shared.models import utcnow
from shared.sync import (
    CloudCommand,
    CloudRelease,
    CommandAccepted,
    ConfigApplied,
    ConfigPush,
    DownMessage,
    EdgeStatus,
    Hello,
    status_query,
)

log = logging.getLogger(__name__)

STREAM_PATH: Final = "/api/edge/v1/stream"
PENDING_PATH: Final = "/api/edge/v1/pending"
WS_RETRY_S: Final = 60.0
STABLE_S: Final = 10.0
# mypy 1.20 loses the TypeForm of an Annotated union alias read from its cache (arg-type
# there, none without a cache): ignore it either way.
_DOWN: Final[TypeAdapter[CloudCommand | CloudRelease | ConfigPush]] = TypeAdapter(DownMessage)  # type: ignore[arg-type,unused-ignore]


@dataclass(slots=True)
class DownlinkStats:
    mode: str = "off"  # off | connecting | stream | poll
    connected_since: float | None = None
    commands: int = 0
    expired: int = 0
    rejected: int = 0
    redelivered: int = 0
    configs_applied: int = 0
    last_error: str | None = None


class Downlink:
    def __init__(
        self,
        settings: EdgeSettings,
        db: Database,
        automation: Automation,
        commands: CommandTracker,
        *,
        alerts: AlertMonitor | None = None,
        clock_offset: Callable[[], float | None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
        health: Callable[[], Awaitable[EdgeStatus]] | None = None,
    ) -> None:
        cloud = settings.cloud
        if not cloud.enabled:
            raise ValueError("the downlink needs cloud.url, cloud.edge_id and a cloud token")
        assert cloud.token is not None and cloud.edge_id is not None
        self._settings = settings
        self._cloud = cloud
        self._edge_id = cloud.edge_id
        self._headers = {
            "Authorization": f"Bearer {cloud.token.get_secret_value()}",
            "X-Edge-Id": cloud.edge_id,
        }
        self._db = db
        self._automation = automation
        self._commands = commands
        self._clock_offset = clock_offset
        self._clock = clock
        self._health = health  # reported on the stream after Hello and every heartbeat
        self._status_polled_at: float | None = None  # loop time of the last poll that carried it
        # Config pushes: applied over the TOML config (and restored at start) by this.
        self.config_sync = ConfigSync(settings, db, automation, alerts=alerts, clock=clock)
        self._lock = asyncio.Lock()
        self.stats = DownlinkStats()

    @property
    def config_version(self) -> int:
        return self.config_sync.version

    # ---- handling one message ----
    async def handle(
        self, message: CloudCommand | CloudRelease | ConfigPush
    ) -> CommandAccepted | ConfigApplied | None:
        """Carry out one message from the cloud; the answer to send back (None: none)."""
        async with self._lock:
            if isinstance(message, CloudCommand | CloudRelease):
                return await self._command(message)
            before = self.config_sync.version
            answer = await self.config_sync.apply(message)
            if answer is not None and answer.version > before:
                self.stats.configs_applied += 1
            return answer

    def _cloud_now(self) -> datetime:
        return self._clock() + timedelta(seconds=self._clock_offset() or 0.0)

    async def _command(self, cmd: CloudCommand | CloudRelease) -> CommandAccepted:
        known = await self._db.read(sync_rows.cloud_command, cmd.command_id)
        if known is not None:
            self.stats.redelivered += 1
            return CommandAccepted(command_id=cmd.command_id, edge_command_id=known["command_id"],
                                   state=known["state"], detail=known["detail"])
        self.stats.commands += 1
        now = self._cloud_now()
        age = (now - _aware(cmd.created_at)).total_seconds()
        if _aware(cmd.expires_at) <= now or age > self._cloud.command_ttl_s:
            detail = f"expired: created {age:.0f} s ago, expires {cmd.expires_at.isoformat()}"
            return await self._refuse(cmd, "expired", detail)
        device = self._settings.device(cmd.device_id)
        if device is None or device.room != cmd.room_id:
            return await self._refuse(cmd, "rejected", f"no device {cmd.device_id} in room"
                                                       f" {cmd.room_id} on this edge")
        if isinstance(cmd, CloudRelease):
            return await self._release(cmd)
        try:
            if cmd.action in ("on", "off"):
                cid = await self._automation.manual_command(
                    cmd.device_id, cmd.action, value=cmd.value, hold_minutes=cmd.hold_minutes,
                    by=cmd.by or "cloud", source="cloud", cloud_command_id=cmd.command_id,
                )
            elif device.kind != "actuator":
                raise InvalidRequest(f"{cmd.device_id} is a sensor")
            else:
                cid = await self._commands.send(
                    device_id=cmd.device_id, room_id=cmd.room_id, action=cmd.action,
                    value=cmd.value, source="cloud", reason="set by the cloud",
                    cloud_command_id=cmd.command_id,
                )
        except (NotFound, InvalidRequest) as exc:
            return await self._refuse(cmd, "rejected", str(exc))
        # The command row and its cloud link are committed before the cloud hears "delivered".
        await self._db.write(_nothing, urgent=True)
        log.info("cloud command %s → %s %s (edge command %s)", cmd.command_id, cmd.device_id,
                 cmd.action, cid)
        return CommandAccepted(command_id=cmd.command_id, edge_command_id=cid, state="delivered")

    async def _release(self, cmd: CloudRelease) -> CommandAccepted:
        """Back to auto: the actuator's manual hold ends and automation decides at once."""
        try:
            await self._automation.clear_override(cmd.device_id)
        except NotFound as exc:
            return await self._refuse(cmd, "rejected", str(exc))
        at = self._clock().timestamp()
        await self._db.write(
            sync_rows.link_cloud_command, cmd.command_id, None, "delivered", at, urgent=True
        )
        log.info("cloud command %s: %s back to automation", cmd.command_id, cmd.device_id)
        # No detail: the cloud keeps an answer's detail as the command's error.
        return CommandAccepted(command_id=cmd.command_id, state="delivered")

    async def _refuse(
        self, cmd: CloudCommand | CloudRelease, state: str, detail: str
    ) -> CommandAccepted:
        at = self._clock().timestamp()
        await self._db.write(
            sync_rows.link_cloud_command, cmd.command_id, None, state, at, detail, urgent=True
        )
        if state == "expired":
            self.stats.expired += 1
        else:
            self.stats.rejected += 1
        log.warning("cloud command %s to %s not executed: %s", cmd.command_id, cmd.device_id,
                    detail)
        return CommandAccepted(command_id=cmd.command_id, state=state, detail=detail)  # type: ignore[arg-type]

    # ---- the connection ----
    async def run(self) -> None:
        """Keep the stream up (reconnecting with backoff); poll while it keeps failing."""
        cloud = self._cloud
        backoff = Backoff(cloud.backoff_initial_s, cloud.backoff_max_s)
        # Bound the connect, not the stream: the stream stays open for days.
        timeout = aiohttp.ClientTimeout(total=None, connect=cloud.request_timeout_s,
                                        sock_connect=cloud.request_timeout_s)
        async with aiohttp.ClientSession(headers=self._headers, timeout=timeout) as session:
            while True:
                self.stats.mode = "connecting"
                started = asyncio.get_running_loop().time()
                connected = await self._stream(session)
                # A stream the cloud drops at once (refused after Hello, a crashing instance)
                # counts as a failure, or the edge would reconnect in a tight loop.
                if connected and asyncio.get_running_loop().time() - started >= STABLE_S:
                    backoff.reset()
                # The end of a stable stream counts as the first failure of a new run.
                delay = backoff.delay()
                if backoff.failures > cloud.ws_failures_before_poll:
                    await self._poll_for(session, WS_RETRY_S)
                    continue
                await asyncio.sleep(delay)

    async def _hello(self) -> Hello:
        marks = await self._db.read(sync_rows.marks)
        return Hello(edge_id=self._edge_id, config_version=self.config_version,
                     acked_seq=marks.acked_seq)

    async def _stream(self, session: aiohttp.ClientSession) -> bool:
        """One WebSocket session; True if it was established (however it ended)."""
        url = self._cloud.endpoint(STREAM_PATH)
        try:
            async with session.ws_connect(
                url, heartbeat=self._cloud.ws_heartbeat_s,
                timeout=aiohttp.ClientWSTimeout(ws_close=10),
            ) as ws:
                self.stats.mode = "stream"
                self.stats.connected_since = self._clock().timestamp()
                log.info("cloud stream connected: %s", url)
                await ws.send_str((await self._hello()).model_dump_json())
                reporter = asyncio.create_task(self._report(ws), name="downlink-health")
                try:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        answer = await self._dispatch(msg.data)
                        if answer is not None:
                            await ws.send_str(answer.model_dump_json())
                finally:
                    reporter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reporter
                log.warning("cloud stream closed (code %s)", ws.close_code)
                return True
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.last_error = f"stream: {type(exc).__name__}: {exc}"
            log.warning("cloud stream to %s failed: %s", url, self.stats.last_error)
            return False
        finally:
            self.stats.connected_since = None

    async def _report(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send the edge's health (backlog, software version) now and every heartbeat."""
        if self._health is None:
            return
        while not ws.closed:
            try:
                status = await self._health()
                await ws.send_str(status.model_dump_json())
            except (aiohttp.ClientError, ConnectionError):
                return  # the stream is ending; its loop notices
            except sqlite3.Error as exc:  # a busy store must not end the stream
                log.warning("edge health not reported: %s", exc)
            await asyncio.sleep(self._cloud.ws_heartbeat_s)

    async def _dispatch(self, raw: Any) -> CommandAccepted | ConfigApplied | None:
        try:
            if isinstance(raw, str | bytes):
                message = _DOWN.validate_json(raw)
            else:
                message = _DOWN.validate_python(raw)
        except ValidationError as exc:
            log.warning("ignoring an unreadable message from the cloud: %s",
                        exc.errors(include_url=False)[0]["msg"])
            return None
        try:
            return await self.handle(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handling a %s from the cloud failed", type(message).__name__)
            return None

    async def _poll_for(self, session: aiohttp.ClientSession, duration_s: float) -> None:
        """Poll the pending endpoint every pending_poll_s for ``duration_s``."""
        self.stats.mode = "poll"
        log.info("cloud stream keeps failing: polling %s", PENDING_PATH)
        deadline = asyncio.get_running_loop().time() + duration_s
        failed = 0
        while asyncio.get_running_loop().time() < deadline:
            try:
                await self.poll_once(session)
                failed = 0
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.stats.last_error = f"poll: {type(exc).__name__}: {exc}"
                # Offline for days is normal: one line a minute or so, not one per poll.
                level = logging.WARNING if failed % 12 == 0 else logging.DEBUG
                log.log(level, "polling the cloud failed: %s", self.stats.last_error)
                failed += 1
            await asyncio.sleep(self._cloud.pending_poll_s)

    async def poll_once(self, session: aiohttp.ClientSession) -> int:
        """One poll: fetch pending messages, handle them, post the answers; returns how many."""
        url = self._cloud.endpoint(PENDING_PATH)
        hello = await self._hello()
        # The farm too: edge ids are per farm, so the cloud can tell this edge holds another
        # farm's token for the same edge id.
        params = {"edge_id": hello.edge_id, "farm_id": self._settings.farm_id,
                  "config_version": str(hello.config_version),
                  "acked_seq": str(hello.acked_seq)}
        health = await self._poll_health()
        params.update(health)
        timeout = aiohttp.ClientTimeout(total=self._cloud.request_timeout_s)
        async with session.get(url, params=params, timeout=timeout) as resp:
            if resp.status in (401, 403):  # say what the cloud says is wrong, not just "403"
                raise ValueError(refusal_message(resp.status, ValueError(await _detail(resp))))
            resp.raise_for_status()
            doc = await resp.json()
        if health:
            self._status_polled_at = asyncio.get_running_loop().time()
        items = doc.get("messages", []) if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise ValueError("pending: expected a list of messages")
        answers = []
        for item in items:
            answer = await self._dispatch(item)
            if answer is not None:
                answers.append(answer.model_dump(mode="json"))
        if answers:
            async with session.post(url, json={"messages": answers}, timeout=timeout) as resp:
                if resp.status >= 400:
                    log.warning("the cloud refused the poll answers: HTTP %d", resp.status)
        return len(items)

    async def _poll_health(self) -> dict[str, str]:
        """The health to send with this poll: at the stream's cadence (the first poll, then once
        a heartbeat), not with every poll; empty otherwise."""
        if self._health is None:
            return {}
        last = self._status_polled_at
        now = asyncio.get_running_loop().time()
        if last is not None and now - last < self._cloud.ws_heartbeat_s:
            return {}
        try:
            return status_query(await self._health())
        # A busy store, or a value the model refuses (a version string past 64 characters):
        # the poll goes without it rather than fail.
        except (sqlite3.Error, ValueError) as exc:
            log.warning("edge health not reported: %s", exc)
            return {}

    def status(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "mode": stats.mode,
            "connected_since": None if stats.connected_since is None
            else datetime.fromtimestamp(stats.connected_since, UTC).isoformat(),
            "config_version": self.config_version,
            "commands": stats.commands,
            "expired": stats.expired,
            "rejected": stats.rejected,
            "redelivered": stats.redelivered,
            "configs_applied": stats.configs_applied,
            "last_error": stats.last_error,
        }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _nothing(conn: sqlite3.Connection) -> None:
    return None


async def _detail(resp: aiohttp.ClientResponse) -> str:
    """The ``detail`` of a problem+json answer (or its text), bounded."""
    try:
        doc = await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return (await resp.text())[:300]
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return str(detail or doc)[:300]
