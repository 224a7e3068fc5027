"""The MQTT topic scheme: round trips, and every malformed or unsafe topic raises TopicError."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import TopicError
from shared.topics import (
    KINDS,
    UPLINK_KINDS,
    Topic,
    build_topic,
    is_valid_id,
    parse_topic,
    subscription,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(ids, ids, st.sampled_from(KINDS), ids)
def test_build_parse_round_trip(farm: str, room: str, kind: Any, device: str) -> None:
    topic = build_topic(farm, room, kind, device)
    parsed = parse_topic(topic)
    assert parsed == Topic(farm, room, kind, device)
    assert str(parsed) == topic


def test_concrete_topic() -> None:
    assert build_topic("farm-1", "room_a", "telemetry", "sensor-1") == (
        "farm/farm-1/room/room_a/telemetry/sensor-1"
    )
    assert parse_topic("farm/f1/room/r1/ack/hum-1") == Topic("f1", "r1", "ack", "hum-1")


def test_uplink_kinds_are_what_devices_publish() -> None:
    assert set(UPLINK_KINDS) == {"telemetry", "status", "ack"}
    assert "command" in KINDS and "command" not in UPLINK_KINDS


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "farm",
        "farm/f1/room/r1/telemetry",
        "farm/f1/room/r1/telemetry/d1/extra",
        "farm/f1/room/r1/telemetry/d1/",
        "/farm/f1/room/r1/telemetry/d1",
        "farms/f1/room/r1/telemetry/d1",
        "farm/f1/rooms/r1/telemetry/d1",
        "farm/f1/room/r1/metrics/d1",
        "farm/f1/room/r1/Telemetry/d1",
    ],
)
def test_wrong_shape_is_rejected(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


@pytest.mark.parametrize(
    "bad_id",
    [
        "+", "#", "a+b", "a#", "", "-lead", "_lead", "a b", "a.b", "a$", "ä", "a\x00", "a\n",
        "x" * 65,
    ],
)
def test_wildcards_and_unsafe_ids_are_rejected(bad_id: str) -> None:
    assert not is_valid_id(bad_id)
    with pytest.raises(TopicError):
        parse_topic(f"farm/{bad_id}/room/r1/telemetry/d1")
    with pytest.raises(TopicError):
        parse_topic(f"farm/f1/room/{bad_id}/telemetry/d1")
    with pytest.raises(TopicError):
        parse_topic(f"farm/f1/room/r1/telemetry/{bad_id}")
    with pytest.raises(TopicError):
        build_topic("f1", "r1", "telemetry", bad_id)
    with pytest.raises(TopicError):
        build_topic(bad_id, "r1", "command", "d1")


def test_build_rejects_unknown_kind_and_non_strings() -> None:
    with pytest.raises(TopicError):
        build_topic("f1", "r1", "metrics", "d1")  # type: ignore[arg-type]
    with pytest.raises(TopicError):
        build_topic("f1", "r1", "telemetry", 7)  # type: ignore[arg-type]
    with pytest.raises(TopicError):
        parse_topic(b"farm/f1/room/r1/telemetry/d1")  # type: ignore[arg-type]


def test_overlong_topic_is_rejected_early() -> None:
    with pytest.raises(TopicError, match="too long"):
        parse_topic("farm/" + "a" * 600 + "/room/r1/telemetry/d1")


def test_max_length_ids_are_accepted() -> None:
    long_id = "a" * 64
    topic = build_topic(long_id, long_id, "status", long_id)
    assert parse_topic(topic).device_id == long_id


def test_subscription_filters() -> None:
    assert subscription("f1") == "farm/f1/room/+/+/+"
    assert subscription("f1", "telemetry") == "farm/f1/room/+/telemetry/+"
    assert subscription("f1", "ack", "r2") == "farm/f1/room/r2/ack/+"
    with pytest.raises(TopicError):
        subscription("#")
    with pytest.raises(TopicError):
        subscription("f1", "telemetry", "r/1")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_garbage_text_raises_only_topic_errors(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except TopicError:
        return
    # Anything accepted must rebuild to itself with only safe ids.
    assert str(parsed) == topic
    assert all(is_valid_id(x) for x in (parsed.farm_id, parsed.room_id, parsed.device_id))


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(["farm", "room", "telemetry", "ack", "f1", "r1", "d1", "+", "#", ""])
        | st.text(max_size=8),
        max_size=8,
    )
)
def test_garbage_segments_raise_only_topic_errors(segments: list[str]) -> None:
    topic = "/".join(segments)
    try:
        parsed = parse_topic(topic)
    except TopicError:
        return
    assert str(parsed) == topic
    assert "+" not in topic and "#" not in topic


def test_parsed_topics_are_remembered_but_bad_ones_always_refused() -> None:
    topic = "farm/f1/room/r1/telemetry/s1"
    first = parse_topic(topic)
    assert parse_topic(topic) is first  # the same frozen instance
    with pytest.raises(TopicError):
        parse_topic("farm/f1/room/r1/telemetry/s 1")
    with pytest.raises(TopicError):
        parse_topic("farm/f1/room/r1/telemetry/s 1")  # not remembered
    for n in range(5000):  # the memory is bounded
        parse_topic(f"farm/f1/room/r1/telemetry/s{n}")
    assert parse_topic(topic) == first
