"""The down channel: commands and versioned config from the cloud, over the edge's own WebSocket.

The edge connects out to ``{cloud.url}/api/edge/v1/stream`` (bearer token), says ``Hello`` and
handles what comes: a ``CloudCommand`` is carried out through the automation's manual path (so it
overrides automation like a command from the local page) with source "cloud", unless it is past
its ``expires_at`` or older than ``command_ttl_s`` ("expired"); a redelivered command is answered
again, never executed twice. A ``ConfigPush`` (rooms, stages, rules, devices) is validated whole,
then applied: stored with its version in one transaction, broker password file and device ACL
rewritten (a device registered in the cloud can connect about a second later), automation
reloaded; the edge answers ``ConfigApplied``. After repeated WebSocket failures the edge polls
``GET /api/edge/v1/pending`` instead (answers: ``POST`` there), and tries the WebSocket again
every minute.

Cloud config is an overlay on the TOML config: rooms and devices it names replace the file's,
the file's others stay. The applied overlay is in the database and re-applied at every start.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
from pydantic import TypeAdapter, ValidationError

from edge.alerts import AlertMonitor
from edge.automation import Automation, InvalidRequest, NotFound
from edge.commands import CommandTracker
from edge.config import DeviceConfig, EdgeSettings, RoomConfig
from edge.credentials import CredentialsError, sync_broker_files
from edge.store import outbox as sync_rows
from edge.store import state as state_rows
from edge.store.db import Database
from edge.uplink import refusal_message
from shared.backoff import Backoff
from shared.models import utcnow
from shared.sync import (
    CloudCommand,
    CommandAccepted,
    ConfigApplied,
    ConfigPush,
    DownMessage,
    Hello,
)

log = logging.getLogger(__name__)

STREAM_PATH: Final = "/api/edge/v1/stream"
PENDING_PATH: Final = "/api/edge/v1/pending"
WS_RETRY_S: Final = 60.0
STABLE_S: Final = 10.0
CONFIG_ALERT: Final = "sync:config_rejected"
# mypy 1.20 loses the TypeForm of an Annotated union alias read from its cache (arg-type
# there, none without a cache): ignore it either way.
_DOWN: Final[TypeAdapter[CloudCommand | ConfigPush]] = TypeAdapter(DownMessage)  # type: ignore[arg-type,unused-ignore]


class ConfigRejected(ValueError):
    """A pushed config that cannot be applied as a whole (nothing of it is applied)."""


def overlay(
    rooms: list[RoomConfig], devices: list[DeviceConfig], push: ConfigPush, edge_username: str
) -> tuple[list[RoomConfig], list[DeviceConfig]]:
    """The TOML rooms and devices with the pushed ones put over them (same id: replaced)."""
    merged_rooms = {r.id: r for r in rooms}
    merged_devices = {d.id: d for d in devices}
    try:
        for room in push.rooms:
            merged_rooms[room.id] = RoomConfig(
                id=room.id, name=room.name, species=room.species, stage=room.stage,
                stage_started=room.stage_started, rules=room.rules,  # type: ignore[arg-type]
            )
        for device in push.devices:
            local = merged_devices.get(device.id)
            merged_devices[device.id] = DeviceConfig(
                id=device.id, room=device.room, kind=device.kind, actuator=device.actuator,
                safety=local.safety if local else None, name=local.name if local else "",
            )
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ConfigRejected(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    for merged in merged_devices.values():
        if merged.room not in merged_rooms:
            raise ConfigRejected(f"device {merged.id} is in unknown room {merged.room!r}")
        if merged.id == edge_username:
            raise ConfigRejected(f"device id {merged.id!r} is the edge's own broker username")
    for spec in push.devices:
        hashed = spec.password_hash
        if hashed is not None and (not hashed.startswith("$argon2") or set(hashed) & {":", "\n"}):
            raise ConfigRejected(f"device {spec.id}: password_hash is not an argon2 hash")
    return list(merged_rooms.values()), list(merged_devices.values())


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
        self._alerts = alerts
        self._clock_offset = clock_offset
        self._clock = clock
        # The TOML's own rooms and devices, under the cloud overlay.
        self._base_rooms = list(settings.rooms)
        self._base_devices = list(settings.devices)
        self._applied: ConfigPush | None = None
        self._lock = asyncio.Lock()
        self.stats = DownlinkStats()

    @property
    def config_version(self) -> int:
        return self._applied.version if self._applied is not None else 0

    # ---- the overlay ----
    async def restore(self) -> None:
        """At start, before the automation loads: put the last applied cloud config back over the
        TOML config."""
        raw = await self._db.read(sync_rows.get_state, "config")
        if raw is None:
            return
        try:
            push = ConfigPush.model_validate(raw)
            rooms, devices = overlay(
                self._base_rooms, self._base_devices, push, self._settings.broker.edge_username
            )
        except (ValidationError, ConfigRejected) as exc:
            log.error("the stored cloud config no longer applies, ignoring it: %s", exc)
            return
        self._settings.rooms, self._settings.devices = rooms, devices
        self._applied = push
        log.info("cloud config version %d restored", push.version)

    def rebase_local(self, fresh: EdgeSettings) -> None:
        """The TOML file changed (new devices): keep the cloud overlay on top of its devices."""
        self._base_devices = list(fresh.devices)
        devices = fresh.devices
        if self._applied is not None:
            _, devices = overlay(self._base_rooms, self._base_devices, self._applied,
                                 self._settings.broker.edge_username)
        self._settings.devices = devices

    def cloud_hashes(self) -> dict[str, str]:
        """{device id: argon2 hash} of the devices registered in the cloud (applied config)."""
        return {
            d.id: d.password_hash for d in (self._applied.devices if self._applied else [])
            if d.password_hash
        }

    def write_credentials(self) -> None:
        """Rebuild the broker password file from the secrets file plus the cloud's device hashes,
        and the ACL map from every device, in one atomic write each: an account the cloud no
        longer lists (and the secrets file does not have) is gone, a new one can log in about a
        second later."""
        hashes = self.cloud_hashes()
        if self._settings.broker.mode != "embedded":
            if hashes:
                log.warning("external broker: %d cloud device password(s) must be installed in"
                            " it by hand", len(hashes))
            return
        sync_broker_files(self._settings, extra_hashes=hashes)

    # ---- handling one message ----
    async def handle(
        self, message: CloudCommand | ConfigPush
    ) -> CommandAccepted | ConfigApplied | None:
        """Carry out one message from the cloud; the answer to send back (None: none)."""
        async with self._lock:
            if isinstance(message, CloudCommand):
                return await self._command(message)
            return await self._config(message)

    def _cloud_now(self) -> datetime:
        return self._clock() + timedelta(seconds=self._clock_offset() or 0.0)

    async def _command(self, cmd: CloudCommand) -> CommandAccepted:
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
        try:
            if cmd.action in ("on", "off"):
                cid = await self._automation.manual_command(
                    cmd.device_id, cmd.action, value=cmd.value, hold_minutes=cmd.hold_minutes,
                    by="cloud", source="cloud", cloud_command_id=cmd.command_id,
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

    async def _refuse(self, cmd: CloudCommand, state: str, detail: str) -> CommandAccepted:
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

    async def _config(self, push: ConfigPush) -> ConfigApplied | None:
        if push.version <= self.config_version:
            return ConfigApplied(version=self.config_version)
        settings = self._settings
        try:
            rooms, devices = overlay(self._base_rooms, self._base_devices, push,
                                     settings.broker.edge_username)
        except ConfigRejected as exc:
            log.error("cloud config version %d refused: %s", push.version, exc)
            if self._alerts is not None:
                await self._alerts.raise_alert(
                    CONFIG_ALERT, kind="sync_config", severity="warning",
                    message=f"cloud config version {push.version} not applied: {exc}",
                )
            return None
        disabled = self._disabled_changes(push)
        await self._db.write(self._store_config, push, disabled, urgent=True)
        previous = {r.id for r in settings.rooms}
        self._applied = push
        settings.rooms, settings.devices = rooms, devices
        try:
            self.write_credentials()
        except (OSError, CredentialsError) as exc:
            log.error("cloud config %d: broker credentials not written: %s", push.version, exc)
        for gone in previous - {r.id for r in rooms}:
            self._automation.rooms.pop(gone, None)
        await self._automation.load()
        for room_id in list(self._automation.rooms):
            await self._automation.evaluate_room(room_id)
        if self._alerts is not None:
            await self._alerts.resolve(CONFIG_ALERT)
        self.stats.configs_applied += 1
        log.info("cloud config version %d applied: %d room(s), %d device(s)", push.version,
                 len(push.rooms), len(push.devices))
        return ConfigApplied(version=push.version)

    def _disabled_changes(self, push: ConfigPush) -> dict[str, bool]:
        """rule id -> disabled, for every rule the pushed rooms have or name."""
        out: dict[str, bool] = {}
        for spec in push.rooms:
            ids = {r.id for r in self._automation.rules(spec.id)} if (
                spec.id in self._automation.rooms) else set()
            ids |= {str(r.get("id")) for r in spec.rules if r.get("id")}
            for rule_id in ids | set(spec.disabled_rules):
                out[rule_id] = rule_id in spec.disabled_rules
        return out

    def _store_config(
        self, conn: sqlite3.Connection, push: ConfigPush, disabled: dict[str, bool]
    ) -> None:
        """One transaction: the version, the config, stages and disabled rules; flagged so the
        triggers do not send these writes back up as local changes."""
        at = self._clock().timestamp()
        sync_rows.set_state(conn, {"applying_config": True}, at)
        sync_rows.set_state(conn, {"config_version": push.version,
                                   "config": push.model_dump(mode="json")}, at)
        today = self._clock().date().isoformat()
        stages = {}
        for spec in push.rooms:
            runtime = self._automation.rooms.get(spec.id)
            started = spec.stage_started or (
                runtime.stage_started if runtime is not None and runtime.stage == spec.stage
                else today
            )
            stages[f"room:{spec.id}"] = {"stage": spec.stage, "stage_started": started}
        state_rows.save_many(conn, stages, at)
        state_rows.save_many(
            conn, {f"rule_disabled:{rule}": True for rule, off in disabled.items() if off}, at
        )
        for rule, off in disabled.items():
            if not off:
                state_rows.delete(conn, f"rule_disabled:{rule}")
        sync_rows.delete_state(conn, "applying_config")

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
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    answer = await self._dispatch(msg.data)
                    if answer is not None:
                        await ws.send_str(answer.model_dump_json())
                log.warning("cloud stream closed (code %s)", ws.close_code)
                return True
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.last_error = f"stream: {type(exc).__name__}: {exc}"
            log.warning("cloud stream to %s failed: %s", url, self.stats.last_error)
            return False
        finally:
            self.stats.connected_since = None

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
        timeout = aiohttp.ClientTimeout(total=self._cloud.request_timeout_s)
        async with session.get(url, params=params, timeout=timeout) as resp:
            if resp.status in (401, 403):  # say what the cloud says is wrong, not just "403"
                raise ValueError(refusal_message(resp.status, ValueError(await _detail(resp))))
            resp.raise_for_status()
            doc = await resp.json()
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
