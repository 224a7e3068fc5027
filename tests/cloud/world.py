"""A small fixed world for API tests: farm F (rooms A and B, devices, a rule, a command, an edge)
with an owner, an operator, a viewer, an operator limited to room A and an operator who signs in
through Cognito only (no password); farm G with its owner."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cloud.auth.passwords import Passwords
from cloud.auth.tokens import AccessTokens, token_hash
from cloud.config import AuthConfig
from cloud.db import (
    commands,
    devices,
    edges,
    farms,
    notifications,
    recommendations,
    rooms,
    rules,
    telemetry,
    users,
)
from cloud.db.database import Database

PASSWORD = "correct horse battery"
FARM, OTHER_FARM = "wf", "wg"
ROOM_A, ROOM_B, OTHER_ROOM = "wf-a", "wf-b", "wg-a"
SENSOR_B, ACTUATOR_B, ACTUATOR_A = "wf-b-sensor", "wf-b-hum", "wf-a-hum"
OTHER_DEVICE = "wg-a-sensor"
RULE_B, COMMAND_B, EDGE = "rh", "cmd-b-1", "wf-edge"
ROLES = ("owner", "operator", "viewer", "limited", "stranger")
COGNITO_SUB = "0b7c1f3e-5a1d-4e7b-9f1a-cafe00000001"


@dataclass
class World:
    user_ids: dict[str, int] = field(default_factory=dict)
    notification_ids: dict[str, int] = field(default_factory=dict)
    recommendation_id: int = 0  # an open one in room B (humidifier on)
    start: datetime = field(default_factory=lambda: datetime.now(UTC))

    def email(self, role: str) -> str:
        return f"{role}@example.com"


def tokens_for(secret: str) -> AccessTokens:
    return AccessTokens(secret.encode(), issuer="smartfarm", ttl_s=900)


def bearer(tokens: AccessTokens, user_id: int, *, expired: bool = False) -> dict[str, str]:
    now = time.time() - 7200 if expired else None
    return {"Authorization": f"Bearer {tokens.issue(user_id, now=now)}"}


async def build_world(db: Database) -> World:
    world = World()
    passwords = Passwords(AuthConfig(argon2_time_cost=1, argon2_memory_kib=64))
    pw = passwords.hash_sync(PASSWORD)
    for role in ROLES:
        row = await users.create(db, email=world.email(role), password_hash=pw)
        world.user_ids[role] = row["id"]
    cognito = await users.for_cognito(db, COGNITO_SUB, world.email("cognito"), create=True)
    assert cognito is not None
    world.user_ids["cognito"] = cognito["id"]
    ids = world.user_ids
    await farms.create(db, farm_id=FARM, name="World farm", timezone="UTC", user_id=ids["owner"])
    await farms.create(
        db, farm_id=OTHER_FARM, name="Other", timezone="UTC", user_id=ids["stranger"]
    )
    for room_id, farm_id in ((ROOM_A, FARM), (ROOM_B, FARM), (OTHER_ROOM, OTHER_FARM)):
        await rooms.create(
            db,
            room_id=room_id,
            farm_id=farm_id,
            name=room_id,
            species="oyster",
            stage="fruiting",
            stage_started=None,
        )
    await farms.set_member(db, FARM, ids["operator"], role="operator", room_ids=None)
    await farms.set_member(db, FARM, ids["viewer"], role="viewer", room_ids=None)
    await farms.set_member(db, FARM, ids["limited"], role="operator", room_ids=[ROOM_A])
    await farms.set_member(db, FARM, ids["cognito"], role="operator", room_ids=None)
    for device_id, farm_id, room_id, kind, actuator in (
        (SENSOR_B, FARM, ROOM_B, "sensor", None),
        (ACTUATOR_B, FARM, ROOM_B, "actuator", "humidifier"),
        (ACTUATOR_A, FARM, ROOM_A, "actuator", "humidifier"),
        (OTHER_DEVICE, OTHER_FARM, OTHER_ROOM, "sensor", None),
    ):
        await devices.create(
            db,
            device_id=device_id,
            farm_id=farm_id,
            room_id=room_id,
            name=device_id,
            kind=kind,
            actuator=actuator,
            capabilities=[],
            credentials_hash=pw,
        )
    await rules.create(
        db,
        FARM,
        ROOM_B,
        RULE_B,
        {
            "type": "threshold",
            "id": RULE_B,
            "room_id": ROOM_B,
            "actuator": ACTUATOR_B,
            "metric": "humidity_pct",
            "on_below": 85,
            "off_above": 90,
        },
        ids["owner"],
    )
    await commands.create(
        db,
        command_id=COMMAND_B,
        farm_id=FARM,
        room_id=ROOM_B,
        device_id=ACTUATOR_B,
        action="on",
        value=None,
        user_id=ids["operator"],
    )
    await edges.create(db, edge_id=EDGE, farm_id=FARM, name="pi", token_hash=token_hash("t"))
    for role in (*ROLES, "cognito"):
        note = await notifications.add(
            db, user_id=ids[role], kind="alert", title=f"hello {role}", farm_id=FARM
        )
        world.notification_ids[role] = note["id"]
    (rec,) = await recommendations.store(
        db,
        FARM,
        ROOM_B,
        source="builtin",
        run_id=None,
        items=[
            {
                "key": "humidity-low",
                "severity": "warning",
                "title": "RH below the target band",
                "reason": "24 h mean 80.6 % vs 85-90 %",
                "action": {"kind": "command", "device_id": ACTUATOR_B, "action": "on"},
            }
        ],
    )
    world.recommendation_id = rec["id"]
    start = world.start - timedelta(hours=2)
    rows = [
        (start + timedelta(minutes=i), ROOM_B, SENSOR_B, metric, value + i * 0.01)
        for i in range(120)
        for metric, value in (("temperature_c", 18.0), ("humidity_pct", 80.0))
    ]
    await telemetry.insert_readings(db, FARM, rows)
    return world


async def add_alarm(dsn: str) -> int:
    """An active farm-wide alarm of farm F (not in the template: tests count alarms); its id."""
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        row = await db.fetch_one(
            "INSERT INTO alert_episodes (farm_id, source, key, kind, severity, message, state,"
            " started_at, last_at) VALUES (%(farm)s, %(edge)s, 'world:' || gen_random_uuid(),"
            " 'sync_backlog', 'critical', 'outbox over its cap', 'active', now(), now())"
            " RETURNING id",
            {"farm": FARM, "edge": EDGE},
        )
    finally:
        await db.close()
    assert row is not None
    return int(row["id"])


PENDING = "esp-3c71bf"


async def add_pending(dsn: str, device_id: str = PENDING) -> str:
    """A device of farm F waiting for adoption, as its edge reported it; its id."""
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        await db.execute(
            "INSERT INTO pending_devices (farm_id, device_id, edge_id, state, first_seen,"
            " last_seen, attempts, address, client_id, reported_at) VALUES (%(farm)s, %(id)s,"
            " %(edge)s, 'pending', now(), now(), 3, '192.168.1.40', %(id)s, now())"
            " ON CONFLICT DO NOTHING",
            {"farm": FARM, "edge": EDGE, "id": device_id},
        )
    finally:
        await db.close()
    return device_id


async def add_note(dsn: str) -> str:
    """A logbook note in room B of farm F; its entry id (``log-{n}``)."""
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        row = await db.fetch_one(
            "INSERT INTO room_logbook (farm_id, room_id, kind, text) VALUES"
            " (%(farm)s, %(room)s, 'note', 'pins on shelf 2') RETURNING id",
            {"farm": FARM, "room": ROOM_B},
        )
    finally:
        await db.close()
    assert row is not None
    return f"log-{row['id']}"
