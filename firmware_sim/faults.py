"""Fault injection: the broken messages real ESP32 fleets send, deterministic by seed.

``garbage_messages`` makes (topic, payload) pairs that an ingest must reject (malformed JSON, wrong
types, impossible values, wrong topics); ``FaultPlan`` makes a simulated node misbehave now and
then while it keeps sending its real readings (garbage in between, duplicates, skewed clocks,
dropped connections).
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

FaultKind = Literal[
    "malformed_json",
    "wrong_types",
    "impossible_values",
    "wrong_topic",
    "duplicate",
    "clock_skew",
    "disconnect",
]
# Kinds whose messages an ingest must refuse (quarantine); the others still carry a valid reading.
INVALID_KINDS: Final[tuple[FaultKind, ...]] = (
    "malformed_json",
    "wrong_types",
    "impossible_values",
    "wrong_topic",
)

_MALFORMED: Final[tuple[bytes, ...]] = (
    b"",
    b"{",
    b'{"device_id": "x", "data": {"temperature_c": 20.1}',
    b"{'device_id': 'x'}",
    b'{"device_id": "x", "data": {"co2_ppm": 800}} trailing',
    b"\xff\xfe\x00garbage",
    b"null",
    b"[]",
    b"42",
    b'"just a string"',
    b"[" * 5_000 + b"]" * 5_000,
    b"\x00" * 64,
    b'{"data": ' * 200 + b"1" + b"}" * 200,
    b"x" * 20_000,
)


def _base_doc(rng: random.Random, device_id: str, now: datetime) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "timestamp": now.isoformat(),
        "data": {
            "temperature_c": round(rng.uniform(14, 24), 2),
            "humidity_pct": round(rng.uniform(70, 98), 1),
            "co2_ppm": float(rng.randint(450, 2500)),
            "light_lux": round(rng.uniform(0, 1200), 1),
            "substrate_moisture": round(rng.uniform(55, 70), 1),
            "battery_v": round(rng.uniform(3.4, 4.2), 3),
        },
    }


def _json(doc: Any) -> bytes:
    # allow_nan: the impossible-values case needs NaN/Infinity literals on the wire.
    return json.dumps(doc, allow_nan=True).encode()


def _wrong_types(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    metric = rng.choice(sorted(doc["data"]))
    variant = rng.randrange(9)
    if variant == 0:
        doc["data"][metric] = str(doc["data"][metric])
    elif variant == 1:
        doc["data"][metric] = rng.choice([True, False])
    elif variant == 2:
        doc["data"][metric] = None
    elif variant == 3:
        doc["data"][metric] = [doc["data"][metric]]
    elif variant == 4:
        doc["data"][metric] = {"value": doc["data"][metric]}
    elif variant == 5:
        doc["data"] = list(doc["data"].values())
    elif variant == 6:
        doc["device_id"] = rng.randint(1, 10_000)
    elif variant == 7:
        doc["timestamp"] = "not a time"
    else:
        doc.pop("data")
    return doc


_IMPOSSIBLE: Final[tuple[tuple[str, float], ...]] = (
    ("humidity_pct", 140.0),
    ("humidity_pct", -3.0),
    ("co2_ppm", -50.0),
    ("co2_ppm", 1e6),
    ("temperature_c", 300.0),
    ("temperature_c", -100.0),
    ("light_lux", -1.0),
    ("substrate_moisture", 120.0),
    ("battery_v", 12.0),
    ("temperature_c", float("nan")),
    ("humidity_pct", float("inf")),
    ("co2_ppm", float("-inf")),
)


def _impossible(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    metric, value = rng.choice(_IMPOSSIBLE)
    doc["data"][metric] = value
    return doc


def _wrong_topic(
    farm_id: str, room_id: str, device_id: str, doc: dict[str, Any], rng: random.Random
) -> tuple[str, dict[str, Any]]:
    good = f"farm/{farm_id}/room/{room_id}/telemetry/{device_id}"
    other = f"{device_id[:50]}-other{rng.randrange(100)}"
    variant = rng.randrange(8)
    if variant == 0:  # the payload claims another device than the topic
        return good, doc | {"device_id": other}
    if variant == 1:  # published on another device's topic
        return f"farm/{farm_id}/room/{room_id}/telemetry/{other}", doc
    if variant == 2:
        return f"farm/{farm_id}/room/{room_id}/telemetry", doc
    if variant == 3:
        return f"{good}/extra", doc
    if variant == 4:
        return f"farm/{farm_id}/room/{room_id}/telemtry/{device_id}", doc
    if variant == 5:
        return f"farm/{farm_id}/rooms/{room_id}/telemetry/{device_id}", doc
    if variant == 6:
        return f"farm/{farm_id}/room//telemetry/{device_id}", doc
    return f"farm/{farm_id}/room/{room_id}/telemetry/bad id!", doc


def skewed_timestamp(
    doc: dict[str, Any], rng: random.Random, now: datetime | None = None
) -> dict[str, Any]:
    """A device clock gone wrong: no RTC (1970), years off, hours ahead, or no timestamp."""
    doc = dict(doc)
    now = now if now is not None else datetime.now(UTC)
    variant = rng.randrange(5)
    if variant == 0:
        doc["timestamp"] = datetime(1970, 1, 1, 0, 0, rng.randrange(60), tzinfo=UTC).isoformat()
    elif variant == 1:
        doc["timestamp"] = (now + timedelta(days=365 * rng.randint(1, 20))).isoformat()
    elif variant == 2:
        doc["timestamp"] = (now - timedelta(days=365 * rng.randint(2, 8))).isoformat()
    elif variant == 3:
        doc["timestamp"] = (now + timedelta(hours=rng.randint(2, 12))).isoformat()
    else:
        doc.pop("timestamp", None)
    return doc


def corrupt(
    kind: FaultKind,
    farm_id: str,
    room_id: str,
    device_id: str,
    doc: dict[str, Any],
    rng: random.Random,
) -> tuple[str, bytes]:
    """One broken rendering of the telemetry ``doc`` for an invalid ``kind``."""
    topic = f"farm/{farm_id}/room/{room_id}/telemetry/{device_id}"
    if kind == "malformed_json":
        return topic, rng.choice(_MALFORMED)
    if kind == "wrong_types":
        return topic, _json(_wrong_types(doc, rng))
    if kind == "impossible_values":
        return topic, _json(_impossible(doc, rng))
    if kind == "wrong_topic":
        bad_topic, bad_doc = _wrong_topic(farm_id, room_id, device_id, doc, rng)
        return bad_topic, _json(bad_doc)
    raise ValueError(f"{kind!r} is not a kind of invalid message")


def garbage_messages(
    farm_id: str,
    room_id: str,
    device_id: str,
    n: int,
    seed: int = 0,
    kinds: tuple[FaultKind, ...] = INVALID_KINDS,
    now: datetime | None = None,
) -> list[tuple[str, bytes]]:
    """``n`` (topic, payload) pairs, each one a message an ingest must refuse; the same seed and
    ``now`` (default: the current time) give the same list. Topics never contain MQTT wildcards,
    so any broker accepts the publish."""
    bad = [k for k in kinds if k not in INVALID_KINDS]
    if bad:
        raise ValueError(f"not invalid kinds: {bad}")
    rng = random.Random(seed)  # noqa: S311 - simulation, not crypto
    now = now if now is not None else datetime.now(UTC)
    out = []
    for i in range(n):
        doc = _base_doc(rng, device_id, now)
        out.append(corrupt(kinds[i % len(kinds)], farm_id, room_id, device_id, doc, rng))
    return out


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Per-message probabilities of each fault for a simulated sensor node."""

    malformed_json: float = 0.0
    wrong_types: float = 0.0
    impossible_values: float = 0.0
    wrong_topic: float = 0.0
    duplicate: float = 0.0
    clock_skew: float = 0.0
    disconnect: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for kind in (*INVALID_KINDS, "duplicate", "clock_skew", "disconnect"):
            p = getattr(self, kind)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{kind} probability {p} not in [0, 1]")

    @classmethod
    def everything(cls, p: float = 0.05, seed: int = 0) -> FaultPlan:
        return cls(p, p, p, p, p, p, p / 5, seed)

    def injector(self, device_id: str) -> FaultInjector:
        """A deterministic fault stream for one device (seed and device id fix it)."""
        return FaultInjector(self, random.Random(f"{self.seed}:{device_id}"))  # noqa: S311 - simulation, not crypto


class FaultInjector:
    """Decides, message by message, what a faulty node actually sends; counts what it did."""

    def __init__(self, plan: FaultPlan, rng: random.Random) -> None:
        self.plan = plan
        self.rng = rng
        self.counts: Counter[str] = Counter()

    def outgoing(
        self, farm_id: str, room_id: str, device_id: str, doc: dict[str, Any]
    ) -> list[tuple[str, bytes]]:
        """The messages to publish for one reading: garbage first (if any), then the reading
        itself — possibly with a skewed clock, possibly twice."""
        plan, rng = self.plan, self.rng
        out: list[tuple[str, bytes]] = []
        for kind in INVALID_KINDS:
            if rng.random() < getattr(plan, kind):
                self.counts[kind] += 1
                out.append(corrupt(kind, farm_id, room_id, device_id, doc, rng))
        if rng.random() < plan.clock_skew:
            self.counts["clock_skew"] += 1
            # Skewed relative to the reading's own time, so the stream depends only on the seed.
            stamp = doc.get("timestamp")
            base = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
            doc = skewed_timestamp(doc, rng, base)
        topic = f"farm/{farm_id}/room/{room_id}/telemetry/{device_id}"
        message = (topic, _json(doc))
        out.append(message)
        if rng.random() < plan.duplicate:
            self.counts["duplicate"] += 1
            out.append(message)
        return out

    def disconnect_now(self) -> bool:
        if self.plan.disconnect > 0 and self.rng.random() < self.plan.disconnect:
            self.counts["disconnect"] += 1
            return True
        return False
