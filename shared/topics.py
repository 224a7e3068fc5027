"""The MQTT topic scheme `farm/{farm_id}/room/{room_id}/{kind}/{device_id}`: build, parse, check."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

from shared.errors import TopicError

Kind = Literal["telemetry", "command", "status", "ack"]
KINDS: Final[tuple[str, ...]] = get_args(Kind)
# Device-originated kinds (what a device may publish); `command` flows the other way.
UPLINK_KINDS: Final[tuple[str, ...]] = ("telemetry", "status", "ack")

# Safe id charset: no MQTT wildcards, no separators, nothing a shell or a path cares about.
ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def check_id(value: object, what: str = "id") -> str:
    if not is_valid_id(value):
        raise TopicError(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_' or '-', starting alphanumeric"
        )
    assert isinstance(value, str)
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    farm_id: str
    room_id: str
    kind: Kind
    device_id: str

    def __str__(self) -> str:
        return f"farm/{self.farm_id}/room/{self.room_id}/{self.kind}/{self.device_id}"


def build_topic(farm_id: str, room_id: str, kind: Kind, device_id: str) -> str:
    check_id(farm_id, "farm_id")
    check_id(room_id, "room_id")
    check_id(device_id, "device_id")
    if kind not in KINDS:
        raise TopicError(f"invalid topic kind {kind!r}")
    return f"farm/{farm_id}/room/{room_id}/{kind}/{device_id}"


# Topics parsed before (a farm has a few hundred devices): Topic is frozen, so the same instance
# serves every message on that topic. Only valid topics are kept; emptied when full.
_PARSED: dict[str, Topic] = {}
_PARSED_MAX: Final = 4096


def parse_topic(topic: str) -> Topic:
    """Parse a concrete topic; raise TopicError naming what is wrong."""
    found = _PARSED.get(topic) if type(topic) is str else None
    if found is not None:
        return found
    parsed = _parse_topic(topic)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[topic] = parsed
    return parsed


def _parse_topic(topic: str) -> Topic:
    if not isinstance(topic, str):
        raise TopicError("topic is not a string")
    if len(topic) > 512:
        raise TopicError("topic too long")
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != "farm" or parts[2] != "room":
        raise TopicError(f"topic {topic[:120]!r} does not match farm/+/room/+/<kind>/+")
    _, farm_id, _, room_id, kind, device_id = parts
    if kind not in KINDS:
        raise TopicError(f"unknown topic kind {kind[:40]!r}")
    check_id(farm_id, "farm_id")
    check_id(room_id, "room_id")
    check_id(device_id, "device_id")
    return Topic(farm_id, room_id, kind, device_id)  # type: ignore[arg-type]


def subscription(farm_id: str, kind: Kind | Literal["+"] = "+", room_id: str = "+") -> str:
    """A filter for one farm's topics of one kind (or all kinds), in one room or all."""
    check_id(farm_id, "farm_id")
    if room_id != "+":
        check_id(room_id, "room_id")
    return f"farm/{farm_id}/room/{room_id}/{kind}/+"


def claim_topic(farm_id: str, device_id: str) -> str:
    """Where the edge hands an adopted node its credentials while it is still logged in with the
    claim code (docs/onboarding.md): only that node's claim session may read it, nobody writes
    it but the edge, and nothing is retained there."""
    return f"farm/{check_id(farm_id, 'farm_id')}/claim/{check_id(device_id, 'device_id')}"
