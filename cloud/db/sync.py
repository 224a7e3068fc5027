"""Edge uploads: the SQL that stores one batch, run on the caller's transaction cursor.

``cloud.sync.ingest`` opens one transaction, locks the edge's row and calls these in order; the
high-water mark moves in the same transaction, so each outbox seq lands exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cloud.db import audit
from cloud.db import live as live_db
from cloud.db.database import Cursor, Database
from cloud.db.telemetry import text_array

BEGIN = "BEGIN"
COMMIT = "COMMIT"
# For a transaction that stores nothing (a NOTIFY): its commit need not wait for the WAL flush.
UNFLUSHED = "SELECT set_config('synchronous_commit', 'off', true)"
AUTHENTICATE = """
SELECT id, farm_id, name, high_water, config_version, last_seen, iot_since FROM edges
WHERE token_hash = %(hash)s"""
LOCK_EDGE = """
SELECT id, farm_id, high_water, clock_offset_s FROM edges
WHERE farm_id = %(farm_id)s AND id = %(id)s FOR UPDATE"""
FINISH = """
UPDATE edges SET high_water = %(high_water)s, last_seen = now(), clock_offset_s = %(offset)s
WHERE farm_id = %(farm_id)s AND id = %(id)s"""
# LOCK_EDGE and OWNERS in one statement (one round trip per batch instead of two): the edge's
# row first (kind "edge", with its mark and clock offset), then the ids the farm has.
LOCK_EDGE_OWNERS = """
WITH edge AS MATERIALIZED (
    SELECT id, farm_id, high_water, clock_offset_s FROM edges
    WHERE farm_id = %(farm_id)s AND id = %(id)s FOR UPDATE
)
SELECT 'edge' AS kind, id, farm_id, high_water, clock_offset_s FROM edge
UNION ALL
SELECT 'room', id, farm_id, NULL, NULL FROM rooms
WHERE farm_id = %(farm_id)s AND id = ANY(%(rooms)s::text[]) AND EXISTS (SELECT FROM edge)
UNION ALL
SELECT 'device', id, farm_id, NULL, NULL FROM devices
WHERE farm_id = %(farm_id)s AND id = ANY(%(devices)s::text[]) AND EXISTS (SELECT FROM edge)
UNION ALL
SELECT 'command', id, farm_id, NULL, NULL FROM commands
WHERE farm_id = %(farm_id)s AND id = ANY(%(commands)s::text[]) AND EXISTS (SELECT FROM edge)"""
# LOCK_EDGE_OWNERS found by the token instead of the id, with what AUTHENTICATE reads: an upload
# authenticates in its own transaction's first statement (one round trip per batch fewer). The
# ids are looked up in the farm the batch names; the caller refuses a batch not of the token's
# edge and farm before using them.
LOCK_HASH_OWNERS = """
WITH edge AS MATERIALIZED (
    SELECT id, farm_id, name, high_water, config_version, last_seen, iot_since, clock_offset_s
    FROM edges WHERE token_hash = %(hash)s FOR UPDATE
)
SELECT 'edge' AS kind, id, farm_id, high_water, clock_offset_s, name, config_version, last_seen,
       iot_since FROM edge
UNION ALL
SELECT 'room', id, farm_id, NULL, NULL, NULL, NULL, NULL, NULL FROM rooms
WHERE farm_id = %(farm_id)s AND id = ANY(%(rooms)s::text[]) AND EXISTS (SELECT FROM edge)
UNION ALL
SELECT 'device', id, farm_id, NULL, NULL, NULL, NULL, NULL, NULL FROM devices
WHERE farm_id = %(farm_id)s AND id = ANY(%(devices)s::text[]) AND EXISTS (SELECT FROM edge)
UNION ALL
SELECT 'command', id, farm_id, NULL, NULL, NULL, NULL, NULL, NULL FROM commands
WHERE farm_id = %(farm_id)s AND id = ANY(%(commands)s::text[]) AND EXISTS (SELECT FROM edge)"""
# Ids are per farm: only the edge's own farm is looked at (another farm's ids are unknown here).
OWNERS = """
SELECT 'room' AS kind, id, farm_id FROM rooms
WHERE farm_id = %(farm_id)s AND id = ANY(%(rooms)s::text[])
UNION ALL
SELECT 'device', id, farm_id FROM devices
WHERE farm_id = %(farm_id)s AND id = ANY(%(devices)s::text[])
UNION ALL
SELECT 'command', id, farm_id FROM commands
WHERE farm_id = %(farm_id)s AND id = ANY(%(commands)s::text[])"""

QUARANTINE = """
INSERT INTO edge_quarantine
    (edge_id, seq, farm_id, origin, received_at, topic, reason, payload, original_size)
VALUES (%(edge_id)s, %(seq)s, %(farm_id)s, %(origin)s, %(received_at)s, %(topic)s, %(reason)s,
        %(payload)s, %(original_size)s)
ON CONFLICT (farm_id, edge_id, seq) DO NOTHING"""

EDGE_COMMAND = """
INSERT INTO edge_commands (edge_id, command_id, farm_id, room_id, device_id, action, value, source,
    reason, created_at, updated_at, cloud_command_id)
VALUES (%(edge_id)s, %(command_id)s, %(farm_id)s, %(room_id)s, %(device_id)s, %(action)s,
        %(value)s, %(source)s, %(reason)s, %(at)s, %(at)s, %(cloud_command_id)s)
ON CONFLICT (farm_id, edge_id, command_id) DO UPDATE SET
    room_id = excluded.room_id, device_id = excluded.device_id, action = excluded.action,
    value = excluded.value, source = excluded.source, reason = excluded.reason,
    created_at = excluded.created_at,
    cloud_command_id = coalesce(edge_commands.cloud_command_id, excluded.cloud_command_id)
RETURNING cloud_command_id"""
EDGE_COMMAND_STATE = """
INSERT INTO edge_commands
    (edge_id, command_id, farm_id, state, attempts, error, updated_at, cloud_command_id)
VALUES (%(edge_id)s, %(command_id)s, %(farm_id)s, %(state)s, %(attempts)s, %(error)s, %(at)s,
        %(cloud_command_id)s)
ON CONFLICT (farm_id, edge_id, command_id) DO UPDATE SET
    state = excluded.state, attempts = greatest(edge_commands.attempts, excluded.attempts),
    error = coalesce(excluded.error, edge_commands.error), updated_at = excluded.updated_at,
    cloud_command_id = coalesce(edge_commands.cloud_command_id, excluded.cloud_command_id)
RETURNING cloud_command_id"""
EDGE_ACK = """
INSERT INTO edge_commands
    (edge_id, command_id, farm_id, device_id, ack_status, acked_at, error, updated_at)
VALUES (%(edge_id)s, %(command_id)s, %(farm_id)s, %(device_id)s, %(status)s, %(at)s, %(error)s,
        %(at)s)
ON CONFLICT (farm_id, edge_id, command_id) DO UPDATE SET
    ack_status = excluded.ack_status, acked_at = excluded.acked_at,
    error = coalesce(excluded.error, edge_commands.error),
    updated_at = greatest(edge_commands.updated_at, excluded.updated_at)
RETURNING cloud_command_id"""
CLOUD_ID_OF = """
SELECT id FROM commands
WHERE farm_id = %(farm_id)s AND edge_id = %(edge_id)s AND edge_command_id = %(command_id)s
LIMIT 1"""
# The edge's word on a cloud command. Only within the edge's farm; "delivered" never overrides
# an outcome (a late "published" record must not undo "acked").
CLOUD_STATE = """
UPDATE commands c SET status = %(status)s, error = coalesce(%(error)s, c.error),
    updated_at = now(), edge_id = coalesce(c.edge_id, %(edge_id)s),
    edge_command_id = coalesce(c.edge_command_id, %(edge_command_id)s),
    delivered_at = coalesce(c.delivered_at, %(at)s)
WHERE c.farm_id = %(farm_id)s AND c.id = %(id)s
  AND c.status <> %(status)s AND (%(status)s <> 'delivered' OR c.status = 'pending')"""

ALERT_ACTIVE = """
INSERT INTO edge_alerts (edge_id, farm_id, key, kind, severity, message, room_id, device_id,
    state, first_at, last_at)
VALUES (%(edge_id)s, %(farm_id)s, %(key)s, %(kind)s, %(severity)s, %(message)s, %(room_id)s,
        %(device_id)s, 'active', %(at)s, %(at)s)
ON CONFLICT (farm_id, edge_id, key) WHERE state = 'active' DO UPDATE SET
    kind = excluded.kind, severity = excluded.severity, message = excluded.message,
    last_at = greatest(edge_alerts.last_at, excluded.last_at), count = edge_alerts.count + 1"""
ALERT_RESOLVE = """
UPDATE edge_alerts SET state = 'resolved', resolved_at = %(at)s,
    last_at = greatest(last_at, %(at)s)
WHERE farm_id = %(farm_id)s AND edge_id = %(edge_id)s AND key = %(key)s AND state = 'active'"""
ALERT_RESOLVED_NEW = """
INSERT INTO edge_alerts (edge_id, farm_id, key, kind, severity, message, room_id, device_id,
    state, first_at, last_at, resolved_at)
VALUES (%(edge_id)s, %(farm_id)s, %(key)s, %(kind)s, %(severity)s, %(message)s, %(room_id)s,
        %(device_id)s, 'resolved', %(at)s, %(at)s, %(at)s)"""

STATUS = """
INSERT INTO device_status (farm_id, device_id, edge_id, online, state, at, firmware)
VALUES (%(farm_id)s, %(device_id)s, %(edge_id)s, %(online)s, %(state)s, %(at)s, %(firmware)s)
ON CONFLICT (farm_id, device_id) DO UPDATE SET edge_id = excluded.edge_id, online = excluded.online,
    state = excluded.state, at = excluded.at,
    firmware = coalesce(excluded.firmware, device_status.firmware)
WHERE excluded.at >= device_status.at"""
DEVICE_SEEN = """
UPDATE devices SET last_seen = %(at)s
WHERE farm_id = %(farm_id)s AND id = %(device_id)s AND (last_seen IS NULL OR last_seen < %(at)s)"""

FARM_VERSION = """
SELECT coalesce((SELECT version FROM farm_config WHERE farm_id = %(farm_id)s), 0) AS version"""
ROOM_FOR_UPDATE = """
SELECT id, stage, config_version, config_origin, disabled_rules FROM rooms
WHERE id = %(room_id)s AND farm_id = %(farm_id)s FOR UPDATE"""
# Config rows changed in this transaction are marked as this edge's edits (see 0004_edge_sync).
SET_ORIGIN = "SELECT set_config('smartfarm.config_origin', %(edge_id)s, true)"
ROOM_IDS = "SELECT id FROM rooms WHERE farm_id = %(farm_id)s ORDER BY id"
SET_STAGE = """
UPDATE rooms SET stage = %(stage)s, stage_started = %(at)s
WHERE farm_id = %(farm_id)s AND id = %(room_id)s"""
SET_DISABLED = """
UPDATE rooms SET disabled_rules = %(ids)s WHERE farm_id = %(farm_id)s AND id = %(room_id)s"""
RULES_FOR_UPDATE = """
SELECT ar.room_id, ar.id, ar.body, ar.config_version, ar.config_origin
FROM automation_rules ar
WHERE ar.farm_id = %(farm_id)s AND ar.id = %(rule_id)s
  AND (%(room_id)s::text IS NULL OR ar.room_id = %(room_id)s)
ORDER BY ar.room_id FOR UPDATE OF ar"""
SET_RULE_BODY = """
UPDATE automation_rules SET body = %(body)s, version = version + 1, updated_by = NULL,
    updated_at = now()
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(rule_id)s"""


async def edge_by_token(db: Database, token_hash: str) -> dict[str, Any] | None:
    return await db.fetch_one(AUTHENTICATE, {"hash": token_hash})


async def lock_edge(cur: Cursor, farm_id: str, edge_id: str) -> dict[str, Any] | None:
    """The edge's row, locked until the transaction ends: one batch per edge at a time."""
    await cur.execute(LOCK_EDGE, {"farm_id": farm_id, "id": edge_id})
    return await cur.fetchone()


async def finish(
    cur: Cursor,
    farm_id: str,
    edge_id: str,
    *,
    high_water: int,
    offset_s: float,
    commit: bool = False,
) -> None:
    """Move the edge's mark; then COMMIT when ``commit`` (the transaction was opened with
    ``begin=True``; in the caller's pipeline, both go in its round trip)."""
    params = {"farm_id": farm_id, "id": edge_id, "high_water": high_water, "offset": offset_s}
    await cur.execute(FINISH, params)
    if commit:
        await cur.execute(COMMIT)


async def owners(
    cur: Cursor,
    farm_id: str,
    *,
    rooms: Iterable[str],
    devices: Iterable[str],
    commands: Iterable[str],
) -> dict[str, dict[str, str]]:
    """``{"room"|"device"|"command": {id: farm_id}}`` for the ids the farm has."""
    out: dict[str, dict[str, str]] = {"room": {}, "device": {}, "command": {}}
    params = {"rooms": list(rooms), "devices": list(devices), "commands": list(commands)}
    if not any(params.values()):
        return out
    await cur.execute(OWNERS, {**params, "farm_id": farm_id})
    for row in await cur.fetchall():
        out[row["kind"]][row["id"]] = row["farm_id"]
    return out


async def lock_edge_with_owners(
    cur: Cursor,
    farm_id: str,
    edge_id: str,
    *,
    rooms: Iterable[str],
    devices: Iterable[str],
    commands: Iterable[str],
    begin: bool = False,
) -> tuple[dict[str, Any] | None, dict[str, dict[str, str]]]:
    """``lock_edge`` and ``owners`` in one round trip: the edge's row (None if it is gone, and
    then no owners) and ``{"room"|"device"|"command": {id: farm_id}}``."""
    params = _id_arrays(rooms, devices, commands)
    await _run(cur, LOCK_EDGE_OWNERS, {**params, "farm_id": farm_id, "id": edge_id}, begin)
    return await _edge_and_owners(cur)


async def lock_token_with_owners(
    cur: Cursor,
    token_hash: str,
    farm_id: str,
    *,
    rooms: Iterable[str],
    devices: Iterable[str],
    commands: Iterable[str],
    begin: bool = False,
) -> tuple[dict[str, Any] | None, dict[str, dict[str, str]]]:
    """``lock_edge_with_owners`` for the edge of a token (its row also has what
    ``edge_by_token`` reads): None if no edge has this token. The ids are ``farm_id``'s: the
    caller checks that it is the edge's farm."""
    params = _id_arrays(rooms, devices, commands)
    await _run(cur, LOCK_HASH_OWNERS, {**params, "farm_id": farm_id, "hash": token_hash}, begin)
    return await _edge_and_owners(cur)


def _id_arrays(
    rooms: Iterable[str], devices: Iterable[str], commands: Iterable[str]
) -> dict[str, Any]:
    """The ids as text[] literals built in C (see telemetry.array_params)."""
    return {"rooms": text_array(tuple(rooms)), "devices": text_array(tuple(devices)),
            "commands": text_array(tuple(commands))}


async def _run(cur: Cursor, query: str, params: dict[str, Any], begin: bool) -> None:
    """``query``, after a BEGIN in the same round trip when ``begin``: the two go in a pipeline
    whose results are read after it ends (reading inside would cost a round trip more)."""
    if not begin:
        await cur.execute(query, params)
        return
    async with cur.connection.pipeline():
        await cur.execute(BEGIN)
        await cur.execute(query, params)


async def begin_unflushed(cur: Cursor) -> None:
    """BEGIN a transaction that writes nothing durable (only notifications): its COMMIT does
    not wait for the WAL flush."""
    await cur.execute(BEGIN)
    await cur.execute(UNFLUSHED)


async def commit(cur: Cursor) -> None:
    await cur.execute(COMMIT)


async def notify_live(db: Database, payloads: list[str]) -> None:
    """NOTIFY the dashboards' channel (cloud.db.live) with ``payloads``, in a transaction of its
    own whose commit does not wait for the WAL flush (it stores nothing): one round trip.
    PostgreSQL serializes the commits of transactions that NOTIFY (a database-wide lock held
    through the commit), so a batch's own transaction never does."""
    if not payloads:
        return
    async with db.cursor() as cur:
        try:
            async with cur.connection.pipeline():
                await begin_unflushed(cur)
                await cur.execute(live_db.NOTIFY, {"payloads": _quoted_array(payloads)})
                await commit(cur)
        except BaseException:
            await rollback(cur)
            raise


def _quoted_array(items: list[str]) -> str:
    """A text[] literal of ``items`` (JSON payloads, full of quotes): escaped by two C-level
    replaces per item, where psycopg's list adaptation ran a Python callback per quote."""
    return "{" + ",".join(
        '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items
    ) + "}"


async def rollback(cur: Cursor) -> None:
    """End a transaction opened by ``begin=True`` after an error; a connection too broken to
    roll back is the pool's to discard (and the error that broke it is the one to report)."""
    with contextlib.suppress(psycopg.Error):
        await cur.connection.rollback()


async def _edge_and_owners(
    cur: Cursor,
) -> tuple[dict[str, Any] | None, dict[str, dict[str, str]]]:
    edge: dict[str, Any] | None = None
    out: dict[str, dict[str, str]] = {"room": {}, "device": {}, "command": {}}
    for row in await cur.fetchall():
        kind = row.pop("kind")
        if kind == "edge":
            edge = row
        else:
            out[kind][row["id"]] = row["farm_id"]
    return edge, out


async def quarantine(cur: Cursor, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await cur.executemany(QUARANTINE, rows)


async def edge_command(cur: Cursor, params: dict[str, Any]) -> str | None:
    """Upsert an edge command by (edge, command id); its cloud command id when known."""
    value = params.get("value")
    await cur.execute(EDGE_COMMAND, {**params, "value": None if value is None else Jsonb(value)})
    row = await cur.fetchone()
    return row["cloud_command_id"] if row else None


async def edge_command_state(cur: Cursor, params: dict[str, Any]) -> str | None:
    await cur.execute(EDGE_COMMAND_STATE, params)
    row = await cur.fetchone()
    return row["cloud_command_id"] if row else None


async def edge_ack(cur: Cursor, params: dict[str, Any]) -> str | None:
    await cur.execute(EDGE_ACK, params)
    row = await cur.fetchone()
    return row["cloud_command_id"] if row else None


async def cloud_id_of(cur: Cursor, farm_id: str, edge_id: str, command_id: str) -> str | None:
    """The cloud command an edge accepted under ``command_id`` (see CommandAccepted)."""
    params = {"farm_id": farm_id, "edge_id": edge_id, "command_id": command_id}
    await cur.execute(CLOUD_ID_OF, params)
    row = await cur.fetchone()
    return row["id"] if row else None


async def cloud_command_state(
    cur: Cursor,
    *,
    command_id: str,
    farm_id: str,
    status: str,
    error: str | None,
    edge_id: str,
    edge_command_id: str,
    at: datetime,
) -> bool:
    params = {
        "id": command_id,
        "farm_id": farm_id,
        "status": status,
        "error": error,
        "edge_id": edge_id,
        "edge_command_id": edge_command_id,
        "at": at,
    }
    await cur.execute(CLOUD_STATE, params)
    return cur.rowcount > 0


async def alert(cur: Cursor, params: dict[str, Any]) -> None:
    if params["state"] == "active":
        await cur.execute(ALERT_ACTIVE, params)
        return
    await cur.execute(ALERT_RESOLVE, params)
    if cur.rowcount == 0:  # resolved without a known start (e.g. raised before the edge synced)
        await cur.execute(ALERT_RESOLVED_NEW, params)


async def status(cur: Cursor, params: dict[str, Any]) -> None:
    await cur.execute(STATUS, {"firmware": None, **params, "state": Jsonb(params["state"])})
    if params["online"]:
        await cur.execute(DEVICE_SEEN, params)


async def farm_version(cur: Cursor, farm_id: str) -> int:
    await cur.execute(FARM_VERSION, {"farm_id": farm_id})
    row = await cur.fetchone()
    return int(row["version"]) if row else 0


async def mark_origin(cur: Cursor, edge_id: str) -> None:
    await cur.execute(SET_ORIGIN, {"edge_id": edge_id})


async def room_ids(cur: Cursor, farm_id: str) -> list[str]:
    await cur.execute(ROOM_IDS, {"farm_id": farm_id})
    return [row["id"] for row in await cur.fetchall()]


async def room_for_update(cur: Cursor, farm_id: str, room_id: str) -> dict[str, Any] | None:
    await cur.execute(ROOM_FOR_UPDATE, {"farm_id": farm_id, "room_id": room_id})
    return await cur.fetchone()


async def set_stage(cur: Cursor, farm_id: str, room_id: str, stage: str, at: datetime) -> None:
    params = {"farm_id": farm_id, "room_id": room_id, "stage": stage, "at": at}
    await cur.execute(SET_STAGE, params)


async def set_disabled_rules(cur: Cursor, farm_id: str, room_id: str, ids: list[str]) -> None:
    await cur.execute(SET_DISABLED, {"farm_id": farm_id, "room_id": room_id, "ids": ids})


async def rules_for_update(
    cur: Cursor, farm_id: str, rule_id: str, room_id: str | None
) -> list[dict[str, Any]]:
    params = {"farm_id": farm_id, "rule_id": rule_id, "room_id": room_id}
    await cur.execute(RULES_FOR_UPDATE, params)
    return await cur.fetchall()


async def set_rule_body(
    cur: Cursor, farm_id: str, room_id: str, rule_id: str, body: dict[str, Any]
) -> None:
    params = {"farm_id": farm_id, "room_id": room_id, "rule_id": rule_id, "body": Jsonb(body)}
    await cur.execute(SET_RULE_BODY, params)


async def audit_entry(
    cur: Cursor, *, farm_id: str, action: str, target: str, detail: dict[str, Any]
) -> None:
    """An audit_log row inside the batch's transaction (no user: the edge did it)."""
    params = {
        "user_id": None,
        "farm_id": farm_id,
        "action": action,
        "target": target,
        "detail": Jsonb(detail),
    }
    await cur.execute(audit.INSERT, params)
