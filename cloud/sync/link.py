"""The down-channel of one edge: the config and commands it still needs, and its answers.

Used by the WebSocket stream (one ``EdgeLink`` per connection, fed by hub events) and by polling
(a fresh link per request). A link never sends the same config version or command twice on one
connection; across reconnects pending commands are sent again, and the edge de-duplicates them by
``command_id``.

A link serves its edge's slice of the farm: the rooms the edge serves, their rules and devices,
and their commands. A config change may move a room to this edge, so after sending a new config
the link also looks for commands it did not send yet (those of a room that just arrived).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from cloud.db import downlink
from cloud.db.database import Database
from cloud.sync.hub import Event
from cloud.sync.settings import SyncConfig
from shared.sync import (
    CloudCommand,
    CloudRelease,
    CommandAccepted,
    ConfigApplied,
    ConfigPush,
    DeviceSpec,
    EdgeStatus,
    Hello,
    PendingDismissal,
    RoomSpec,
)

log = logging.getLogger(__name__)

DownMsg = CloudCommand | CloudRelease | ConfigPush
UpMsg = Hello | ConfigApplied | CommandAccepted | EdgeStatus
# CommandAccepted.state → the cloud command's status.
ACCEPTED_STATUS = {"delivered": "delivered", "expired": "expired", "rejected": "failed"}


def build_config(snap: downlink.ConfigSnapshot) -> ConfigPush:
    """The ConfigPush of a snapshot: rooms with their rules and disabled rule ids, devices with
    their broker password hash."""
    rules: dict[str, list[dict[str, Any]]] = {}
    for rule in snap.rules:
        rules.setdefault(rule["room_id"], []).append(rule["body"])
    rooms = []
    for room in snap.rooms:
        room_rules = rules.get(room["id"], [])
        off = {r["id"] for r in room_rules if not r.get("enabled", True)}
        rooms.append(
            RoomSpec(
                id=room["id"],
                name=room["name"],
                species=room["species"],
                stage=room["stage"],
                stage_started=room["stage_started"].isoformat(timespec="seconds"),
                rules=room_rules,
                disabled_rules=sorted(off | set(room["disabled_rules"])),
            )
        )
    devices = [
        DeviceSpec(
            id=d["id"],
            room=d["room_id"],
            kind=d["kind"],
            actuator=d["actuator"],
            password_hash=d["credentials_hash"],
            safety=d.get("safety"),
        )
        for d in snap.devices
    ]
    dismissed = [PendingDismissal(device_id=d["device_id"], at=d["dismissed_at"])
                 for d in snap.dismissed]
    return ConfigPush(
        version=snap.version,
        rooms=rooms,
        devices=devices,
        other_rooms=snap.other_rooms,
        dismissed=dismissed,
    )


def cloud_command(row: dict[str, Any], ttl_s: float) -> CloudCommand | CloudRelease:
    """The message of a pending command row (also what AWS IoT edges are sent): a command, or
    the end of a manual hold (action "auto")."""
    expires_at = row["created_at"] + timedelta(seconds=ttl_s)
    if row["action"] == "auto":
        return CloudRelease(
            command_id=row["id"],
            device_id=row["device_id"],
            room_id=row["room_id"],
            created_at=row["created_at"],
            expires_at=expires_at,
        )
    value = row["value"]
    return CloudCommand(
        command_id=row["id"],
        device_id=row["device_id"],
        room_id=row["room_id"],
        action=row["action"],
        value=value if isinstance(value, int | float | bool) else None,
        hold_minutes=row.get("hold_minutes"),
        by=row.get("by_name"),
        created_at=row["created_at"],
        expires_at=expires_at,
    )


class EdgeLink:
    def __init__(
        self, db: Database, edge: dict[str, Any], config: SyncConfig, *, config_version: int
    ) -> None:
        self._db = db
        self.edge_id: str = edge["id"]
        self.farm_id: str = edge["farm_id"]
        self._ttl = config.command_ttl_s
        self.applied_version = config_version
        self._sent_version = 0
        self._sent_commands: set[str] = set()

    async def catch_up(self) -> list[DownMsg]:
        """Everything the edge is missing: the config if it is behind, then pending commands."""
        out: list[DownMsg] = []
        push = await self._config_if_behind(None)
        if push is not None:
            out.append(push)
        out.extend(await self._commands(None))
        return out

    async def on_event(self, event: Event) -> list[DownMsg]:
        if event.kind == "command":
            return await self._announced(event.command_id)
        if event.kind == "config":
            push = await self._config_if_behind(event.version)
            if push is None:
                return []
            # The change may have moved a room here: its pending commands come with it.
            return [push, *await self._commands(None)]
        return await self.catch_up()

    async def _config_if_behind(self, announced: int | None) -> ConfigPush | None:
        known = max(self.applied_version, self._sent_version)
        if announced is not None and announced <= known:
            return None
        if await downlink.farm_version(self._db, self.farm_id) <= known:
            return None  # nothing configured in the cloud yet (0), or the edge has it
        push = build_config(await downlink.snapshot(self._db, self.farm_id, self.edge_id))
        if push.version <= known:
            return None
        self._sent_version = push.version
        return push

    async def _announced(self, command_id: str | None) -> list[DownMsg]:
        """The command just announced, if it is this edge's to run. By one statement: every
        stream of the farm on every instance hears the announcement (a command's delivery took
        four round trips here, on a pool shared with the batches). A command already past its
        TTL (an announcement that took that long) is left to the expiry sweep, never sent."""
        if command_id is None or command_id in self._sent_commands:
            return []
        row = await downlink.pending_command(
            self._db, self.farm_id, command_id, edge_id=self.edge_id
        )
        if row is None or row["created_at"] < datetime.now(UTC) - timedelta(seconds=self._ttl):
            return []
        self._sent_commands.add(row["id"])
        return [cloud_command(row, self._ttl)]

    async def _commands(self, command_id: str | None) -> list[CloudCommand | CloudRelease]:
        rows, expired = await downlink.pending_commands(
            self._db, self.farm_id, ttl_s=self._ttl, command_id=command_id, edge_id=self.edge_id
        )
        if expired:
            log.info(
                "expired %d stale command(s) of farm %s: %s", len(expired), self.farm_id, expired
            )
        out: list[CloudCommand | CloudRelease] = []
        for row in rows:
            if row["id"] in self._sent_commands:
                continue
            out.append(cloud_command(row, self._ttl))
            self._sent_commands.add(row["id"])
        return out

    async def receive(self, msg: UpMsg) -> None:
        """Apply one edge → cloud message."""
        if isinstance(msg, ConfigApplied):
            self.applied_version = msg.version
            await downlink.set_applied_version(self._db, self.farm_id, self.edge_id, msg.version)
            log.info("edge %s applied config version %d", self.edge_id, msg.version)
        elif isinstance(msg, CommandAccepted):
            status = ACCEPTED_STATUS[msg.state]
            error = msg.detail
            if msg.state == "rejected" and not error:
                error = "rejected by the edge"
            now = await downlink.accept(
                self._db,
                farm_id=self.farm_id,
                command_id=msg.command_id,
                status=status,
                error=error,
                edge_id=self.edge_id,
                edge_command_id=msg.edge_command_id,
            )
            self._sent_commands.discard(msg.command_id)
            if now is None:
                log.warning("edge %s answered unknown command %s", self.edge_id, msg.command_id)
        elif isinstance(msg, EdgeStatus):
            await downlink.set_status(
                self._db,
                self.farm_id,
                self.edge_id,
                backlog=msg.backlog,
                software_version=msg.software_version,
            )
        elif isinstance(msg, Hello):
            self.applied_version = msg.config_version
