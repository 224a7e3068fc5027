"""Demo data for ``smartfarm cloud seed-db``: a farm with two rooms, devices, rules and a week of
realistic telemetry (COPY). Idempotent: a rerun adds only what is missing, telemetry included."""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter

from cloud.auth.passwords import Passwords
from cloud.db import devices as devices_db
from cloud.db import farms as farms_db
from cloud.db import rooms as rooms_db
from cloud.db import rules as rules_db
from cloud.db import telemetry as telemetry_db
from cloud.db import users as users_db
from cloud.db.database import Database
from shared.rules import Rule
from shared.vocabulary import ACTUATOR_ROLES

DEMO_EMAIL = "demo@smartfarm.local"
DEMO_PASSWORD = "smartfarm-demo"  # noqa: S105 - the documented demo login
FARM_ID = "demo-farm"
STEP = timedelta(seconds=60)
BATCH_ROWS = 50_000
Progress = Callable[[int, int], None]

# (room id, name, species, stage, means: temperature °C, RH %, CO₂ ppm)
ROOMS = (
    ("demo-oyster", "Oyster fruiting", "oyster", "fruiting", (17.0, 88.0, 800.0)),
    ("demo-lions-mane", "Lion's mane pinning", "lions_mane", "pinning", (15.0, 95.0, 700.0)),
)
ACTUATORS = ACTUATOR_ROLES


def _rules(room_id: str, rh_target: float) -> list[dict[str, Any]]:
    return [
        {
            "type": "threshold",
            "id": "rh",
            "room_id": room_id,
            "actuator": f"{room_id}-humidifier",
            "metric": "humidity_pct",
            "on_below": rh_target - 3,
            "off_above": rh_target + 1,
            "for_s": 30,
        },
        {
            "type": "threshold",
            "id": "co2",
            "room_id": room_id,
            "actuator": f"{room_id}-exhaust_fan",
            "metric": "co2_ppm",
            "on_above": 1000,
            "off_below": 800,
            "for_s": 60,
        },
        {
            "type": "schedule",
            "id": "light",
            "room_id": room_id,
            "actuator": f"{room_id}-light",
            "windows": [{"start": "07:00", "end": "19:00"}],
        },
    ]


def readings(
    room_id: str, device_id: str, means: tuple[float, float, float], start: datetime, end: datetime
) -> Iterator[tuple[datetime, str, str, str, float]]:
    """A sensor node's week: diurnal temperature, humidifier saw-tooth on RH, CO₂ respiration
    flushed by the fan, lights 07–19, a slowly draining battery. Seeded per room: repeatable."""
    rng = random.Random(f"{room_id}:{start.date()}")  # noqa: S311 - simulation, not crypto
    temp0, rh0, co2_0 = means
    t = start
    while t < end:
        hours = t.hour + t.minute / 60
        day = math.sin((hours - 9) / 24 * 2 * math.pi)
        minute = t.timestamp() / 60
        temperature = temp0 + 1.5 * day + rng.gauss(0, 0.15)
        humidity = min(100.0, rh0 - 3 + 4 * ((minute % 20) / 20) + rng.gauss(0, 0.6))
        co2 = co2_0 + 250 * ((minute % 30) / 30) + rng.gauss(0, 25)
        light = 450.0 + rng.gauss(0, 10) if 7 <= t.hour < 19 else 0.0
        moisture = 62 - 4 * ((t - start) / timedelta(days=7)) + rng.gauss(0, 0.3)
        battery = 4.1 - 0.15 * ((t - start) / timedelta(days=7))
        for metric, value in (
            ("temperature_c", temperature),
            ("humidity_pct", humidity),
            ("co2_ppm", max(co2, 400.0)),
            ("light_lux", max(light, 0.0)),
            ("substrate_moisture", moisture),
            ("battery_v", battery),
        ):
            yield (t, room_id, device_id, metric, round(value, 3))
        t += STEP


async def seed(
    db: Database,
    passwords: Passwords,
    *,
    days: int = 7,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Fill the demo farm; counts of what was added."""
    now = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    added = {"users": 0, "farms": 0, "rooms": 0, "devices": 0, "rules": 0, "readings": 0}
    user = await users_db.by_email(db, DEMO_EMAIL)
    if user is None:
        user = await users_db.create(
            db,
            email=DEMO_EMAIL,
            password_hash=await passwords.hash(DEMO_PASSWORD),
            display_name="Demo grower",
        )
        added["users"] += 1
    if await farms_db.get(db, FARM_ID) is None:
        await farms_db.create(
            db, farm_id=FARM_ID, name="Demo mushroom farm", timezone="UTC", user_id=user["id"]
        )
        added["farms"] += 1
    rule_adapter: TypeAdapter[Any] = TypeAdapter(Rule)  # type: ignore[arg-type,unused-ignore]
    plan: list[tuple[str, str, tuple[float, float, float], datetime]] = []
    for room_id, name, species, stage, means in ROOMS:
        if await rooms_db.get(db, FARM_ID, room_id) is None:
            await rooms_db.create(
                db,
                room_id=room_id,
                farm_id=FARM_ID,
                name=name,
                species=species,
                stage=stage,
                stage_started=now - timedelta(days=3),
            )
            added["rooms"] += 1
        devices = [(f"{room_id}-sensor", "sensor", None)] + [
            (f"{room_id}-{role}", "actuator", role) for role in ACTUATORS
        ]
        for device_id, kind, role in devices:
            if await devices_db.get(db, FARM_ID, device_id) is None:
                await devices_db.create(
                    db,
                    device_id=device_id,
                    farm_id=FARM_ID,
                    room_id=room_id,
                    name=device_id,
                    kind=kind,
                    actuator=role,
                    capabilities=[],
                    credentials_hash=await passwords.hash(secrets.token_urlsafe(24)),
                )
                added["devices"] += 1
        for body in _rules(room_id, means[1]):
            rule = rule_adapter.validate_python(body)
            if await rules_db.ensure(db, FARM_ID, room_id, rule.id, rule.model_dump(mode="json")):
                added["rules"] += 1
        latest = await devices_db.latest(db, FARM_ID, f"{room_id}-sensor")
        start = now - timedelta(days=days)
        if latest:
            start = max(start, max(r["time"] for r in latest) + STEP)
        plan.append((room_id, f"{room_id}-sensor", means, start))

    total = sum(max(0, int((now - start) / STEP)) * 6 for _, _, _, start in plan)
    done = 0
    for room_id, device_id, means, start in plan:
        batch: list[tuple[datetime, str, str, str, float]] = []
        for row in readings(room_id, device_id, means, start, now):
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                done += await telemetry_db.insert_readings(db, FARM_ID, batch)
                batch = []
                if progress:
                    progress(done, total)
        if batch:
            done += await telemetry_db.insert_readings(db, FARM_ID, batch)
        if progress:
            progress(done, total)
    added["readings"] = done
    return added
