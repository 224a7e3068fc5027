"""Wire models: what a valid message looks like and that garbage only ever raises PayloadError."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import PayloadError
from shared.models import (
    MAX_PAYLOAD_BYTES,
    Ack,
    Command,
    dump,
    parse_ack,
    parse_command,
    parse_status,
    parse_telemetry,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def telemetry(**overrides: Any) -> bytes:
    doc: dict[str, Any] = {
        "device_id": "sensor-1",
        "timestamp": "2024-06-01T11:59:30Z",
        "data": {"temperature_c": 18.5, "humidity_pct": 87.2, "co2_ppm": 850},
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def with_metric(name: str, raw_value: str) -> bytes:
    """A telemetry payload whose ``name`` metric is the literal JSON text ``raw_value``."""
    return (
        '{"device_id": "sensor-1", "timestamp": "2024-06-01T11:59:30Z", '
        f'"data": {{"{name}": {raw_value}}}}}'
    ).encode()


# ---- telemetry ----


def test_valid_telemetry_keeps_device_time_and_values() -> None:
    tel = parse_telemetry(telemetry(), received_at=NOW, expected_device="sensor-1")
    assert tel.device_id == "sensor-1"
    assert tel.timestamp == datetime(2024, 6, 1, 11, 59, 30, tzinfo=UTC)
    assert not tel.timestamp_replaced
    assert tel.data == {"temperature_c": 18.5, "humidity_pct": 87.2, "co2_ppm": 850.0}


def test_unknown_numeric_metrics_are_kept() -> None:
    tel = parse_telemetry(
        telemetry(data={"humidity_pct": 90, "substrate_ph": 6.2, "fan_rpm": 1200}),
        received_at=NOW,
    )
    assert tel.data["substrate_ph"] == 6.2
    assert tel.data["fan_rpm"] == 1200.0


def test_bounds_of_the_physical_range_are_accepted() -> None:
    tel = parse_telemetry(
        telemetry(data={"humidity_pct": 100, "co2_ppm": 0, "temperature_c": -40}),
        received_at=NOW,
    )
    assert tel.data == {"humidity_pct": 100.0, "co2_ppm": 0.0, "temperature_c": -40.0}


@pytest.mark.parametrize(
    ("name", "raw", "words"),
    [
        ("humidity_pct", "120", "outside physical range"),
        ("humidity_pct", "-0.5", "outside physical range"),
        ("co2_ppm", "-1", "outside physical range"),
        ("temperature_c", "150", "outside physical range"),
        ("temperature_c", "true", "must be a number"),
        ("temperature_c", '"21.5"', "must be a number"),
        ("temperature_c", "null", "must be a number"),
        ("temperature_c", "[21.5]", "must be a number"),
        ("temperature_c", "NaN", "not finite"),  # Python's json accepts NaN/Infinity literals
        ("co2_ppm", "Infinity", "not finite"),
        ("co2_ppm", "-Infinity", "not finite"),
        ("light_lux", "1e400", "not finite"),
        ("Temperature", "21", "snake_case"),
    ],
)
def test_impossible_or_mistyped_values_are_rejected(name: str, raw: str, words: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_telemetry(with_metric(name, raw), received_at=NOW)
    assert words in info.value.reason
    assert info.value.field == "data"


def test_huge_integer_is_a_payload_error_not_an_overflow() -> None:
    # 400 digits parse as a Python int that float() cannot hold.
    with pytest.raises(PayloadError):
        parse_telemetry(with_metric("fan_rpm", "9" * 400), received_at=NOW)


def test_integer_longer_than_pythons_digit_limit_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        parse_telemetry(with_metric("fan_rpm", "9" * 5000), received_at=NOW)


@pytest.mark.parametrize(
    "data", [{}, [], "humid", 42, {str(i): 1 for i in range(40)}], ids=repr
)
def test_data_must_be_a_small_nonempty_object(data: Any) -> None:
    with pytest.raises(PayloadError) as info:
        parse_telemetry(telemetry(data=data), received_at=NOW)
    assert info.value.field == "data"


@pytest.mark.parametrize(
    "timestamp",
    [
        None,
        "1970-01-01T00:00:05Z",  # an ESP32 without RTC counting from the epoch
        0,
        "2024-05-30T11:59:59Z",  # more than a day old
        "2024-06-01T12:06:00Z",  # six minutes in the future
        "2031-01-01T00:00:00Z",
    ],
)
def test_missing_or_implausible_timestamp_is_replaced_and_flagged(timestamp: Any) -> None:
    payload = telemetry(timestamp=timestamp) if timestamp is not None else json.dumps(
        {"device_id": "sensor-1", "data": {"humidity_pct": 90}}
    )
    tel = parse_telemetry(payload, received_at=NOW)
    assert tel.timestamp == NOW
    assert tel.timestamp_replaced


def test_slightly_skewed_and_buffered_timestamps_are_trusted() -> None:
    for ts in ("2024-06-01T12:04:00Z", "2024-05-31T13:00:00Z", "2024-06-01T14:00:00+02:00"):
        tel = parse_telemetry(telemetry(timestamp=ts), received_at=NOW)
        assert not tel.timestamp_replaced, ts
        assert tel.timestamp == datetime.fromisoformat(ts)


def test_naive_timestamp_is_read_as_utc() -> None:
    tel = parse_telemetry(telemetry(timestamp="2024-06-01T11:00:00"), received_at=NOW)
    assert tel.timestamp == datetime(2024, 6, 1, 11, 0, tzinfo=UTC)


def test_flag_is_not_serialised() -> None:
    tel = parse_telemetry(telemetry(timestamp=None), received_at=NOW)
    assert "timestamp_replaced" not in json.loads(dump(tel))


def test_device_id_must_match_topic() -> None:
    with pytest.raises(PayloadError) as info:
        parse_telemetry(telemetry(), received_at=NOW, expected_device="sensor-2")
    assert info.value.field == "device_id"


@pytest.mark.parametrize("device_id", ["", "a/b", "+", "#", "x" * 65, 7, None])
def test_unsafe_device_id_is_rejected(device_id: Any) -> None:
    with pytest.raises(PayloadError) as info:
        parse_telemetry(telemetry(device_id=device_id), received_at=NOW)
    assert info.value.field == "device_id"


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "malformed JSON"),
        (b"{not json", "malformed JSON"),
        (b'{"device_id": "\xff"}', "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ],
    ids=["empty", "broken", "latin1", "array", "string", "deep"],
)
def test_non_object_payloads_are_rejected(payload: bytes, words: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_telemetry(payload, received_at=NOW)
    assert words in info.value.reason


def test_payload_size_limit() -> None:
    filler = "x" * (MAX_PAYLOAD_BYTES + 1)
    payload = telemetry(note=filler)
    with pytest.raises(PayloadError) as info:
        parse_telemetry(payload, received_at=NOW)
    assert "limit" in info.value.reason
    # Just under the limit is fine: the limit is on the size, not on extra keys.
    small = telemetry(note="x" * (MAX_PAYLOAD_BYTES - len(telemetry(note="")) - 10))
    assert parse_telemetry(small, received_at=NOW).device_id == "sensor-1"


# ---- command, ack, status ----


def test_command_round_trip() -> None:
    cmd = Command(
        command_id="c-1", device_id="hum-1", action="on", value=True, timestamp=NOW
    )
    again = parse_command(dump(cmd))
    assert again == cmd
    assert json.loads(dump(cmd))["timestamp"] == "2024-06-01T12:00:00Z"


def test_command_without_value_omits_it_on_the_wire() -> None:
    cmd = Command(command_id="c-2", device_id="hum-1", action="off", timestamp=NOW)
    assert "value" not in json.loads(dump(cmd))


@pytest.mark.parametrize(
    "change",
    [
        {"action": "explode"},
        {"timestamp": None},
        {"timestamp": "yesterday"},
        {"command_id": "c/1"},
        {"command_id": None},
        {"device_id": "#"},
    ],
    ids=repr,
)
def test_bad_commands_are_rejected(change: dict[str, Any]) -> None:
    doc = {"command_id": "c", "device_id": "d", "action": "on", "timestamp": "2024-06-01T12:00:00Z"}
    assert parse_command(json.dumps(doc)).action == "on"
    doc = {k: v for k, v in (doc | change).items() if v is not None}
    with pytest.raises(PayloadError):
        parse_command(json.dumps(doc))


def test_command_level_must_be_finite() -> None:
    payload = (
        '{"command_id": "c", "device_id": "d", "action": "set", "value": NaN,'
        ' "timestamp": "2024-06-01T12:00:00Z"}'
    )
    with pytest.raises(PayloadError):
        parse_command(payload)


def test_ack_ok_and_error() -> None:
    ok = parse_ack(b'{"command_id": "c-1", "status": "ok", "state": {"on": true}}')
    assert ok == Ack(command_id="c-1", status="ok", state={"on": True})
    err = parse_ack(
        b'{"command_id": "c-1", "status": "error", "error": "relay stuck", "device_id": "hum-1"}',
        expected_device="hum-1",
    )
    assert err.status == "error"
    assert err.error == "relay stuck"


def test_ack_rejects_unknown_status_and_foreign_device() -> None:
    with pytest.raises(PayloadError):
        parse_ack(b'{"command_id": "c-1", "status": "maybe"}')
    with pytest.raises(PayloadError) as info:
        parse_ack(
            b'{"command_id": "c-1", "status": "ok", "device_id": "hum-2"}',
            expected_device="hum-1",
        )
    assert info.value.field == "device_id"


def test_status_parsing() -> None:
    status = parse_status(
        b'{"device_id": "hum-1", "online": false, "state": {"on": false, "level": 0},'
        b' "firmware": "1.2.0", "rssi_dbm": -61, "uptime_s": 3600}',
        expected_device="hum-1",
    )
    assert status.online is False
    assert status.state == {"on": False, "level": 0}
    assert status.rssi_dbm == -61.0
    with pytest.raises(PayloadError):
        parse_status(b'{"device_id": "hum-1"}', expected_device="hum-2")
    with pytest.raises(PayloadError):
        parse_status(b'{"device_id": "hum-1", "online": "perhaps"}')


def test_string_payloads_are_accepted_like_bytes() -> None:
    assert parse_status('{"device_id": "fan-1"}').device_id == "fan-1"


# ---- fuzz: nothing but PayloadError may escape ----

PARSERS = (
    lambda p: parse_telemetry(p, received_at=NOW, expected_device="sensor-1"),
    parse_command,
    lambda p: parse_ack(p, expected_device="sensor-1"),
    lambda p: parse_status(p, expected_device="sensor-1"),
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=20,
)
# Documents shaped like our messages, with random values: reaches the validators, not just JSON.
near_miss = st.fixed_dictionaries(
    {},
    optional={
        "device_id": st.sampled_from(["sensor-1", "", "a/b"]) | json_values,
        "timestamp": st.sampled_from(["1970-01-01T00:00:00Z", "2024-06-01T12:00:00Z", "junk"])
        | st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat)
        | json_values,
        "data": st.dictionaries(
            st.sampled_from(["temperature_c", "humidity_pct", "co2_ppm", "x", "Bad Name"])
            | st.text(max_size=10),
            json_values,
            max_size=6,
        )
        | json_values,
        "command_id": st.sampled_from(["c-1", "#"]) | json_values,
        "action": st.sampled_from(["on", "off", "set", "boom"]) | json_values,
        "value": json_values,
        "status": st.sampled_from(["ok", "error", "?"]) | json_values,
        "state": st.dictionaries(st.text(max_size=10), json_values, max_size=4) | json_values,
        "online": json_values,
        "rssi_dbm": json_values,
    },
)


def only_payload_errors(payload: bytes | str) -> None:
    for parse in PARSERS:
        try:
            parse(payload)
        except PayloadError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_payload_errors(payload: bytes) -> None:
    only_payload_errors(payload)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_values_raise_only_payload_errors(value: Any) -> None:
    only_payload_errors(json.dumps(value))


@settings(max_examples=500, deadline=None)
@given(near_miss)
def test_message_shaped_garbage_raises_only_payload_errors(doc: dict[str, Any]) -> None:
    only_payload_errors(json.dumps(doc))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_raises_only_payload_errors(text: str) -> None:
    only_payload_errors(text)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
        st.floats(min_value=0, max_value=100),
        min_size=1,
        max_size=10,
    ),
    st.datetimes(
        min_value=datetime(2024, 5, 31, 12, 1), max_value=datetime(2024, 6, 1, 12, 4)
    ),
)
def test_valid_telemetry_always_parses(data: dict[str, float], ts: datetime) -> None:
    payload = json.dumps(
        {"device_id": "sensor-1", "timestamp": ts.replace(tzinfo=UTC).isoformat(), "data": data}
    )
    tel = parse_telemetry(payload, received_at=NOW)
    assert tel.data == data
    assert not tel.timestamp_replaced
    assert tel.timestamp is not None
    assert abs(tel.timestamp - NOW) <= timedelta(days=1)


def outcome(payload: bytes | bytearray) -> Any:
    try:
        return parse_telemetry(payload, received_at=NOW, expected_device="sensor-1")
    except PayloadError as exc:
        return f"refused: {exc}"


def same_either_way(payload: bytes) -> None:
    # bytes take pydantic's JSON parser first; a bytearray goes json.loads + model_validate.
    assert outcome(payload) == outcome(bytearray(payload))


@pytest.mark.parametrize(
    "payload",
    [
        telemetry(),
        b"\xef\xbb\xbf" + telemetry(),  # UTF-8 BOM
        telemetry().decode().encode("utf-16"),
        b'{"device_id":"sensor-1","data":{"temperature_c":NaN}}',
        b'{"device_id":"sensor-1","data":{"temperature_c":Infinity}}',
        b'{"device_id":"sensor-1","data":{"temperature_c":1e400}}',
        b'{"device_id":"sensor-1","data":{"co2_ppm":' + b"9" * 5000 + b"}}",
        b'{"device_id":"sensor-1","data":{"temperature_c":20,"temperature_c":21.5}}',
        b'{"device_id":"sensor-1","device_id":"other","data":{"temperature_c":20}}',
        b'{"device_id":"sensor-\\ud800","data":{"temperature_c":20}}',
        b'{"device_id":"sensor-1","data":{"temperature_c":20}} ',
        b'{"device_id":"sensor-1","data":{"temperature_c":20}}x',
        b'{"device_id":"sensor-1","timestamp":1717243170,"data":{"temperature_c":20}}',
        b'{"device_id":"sensor-1","timestamp_replaced":true,"data":{"temperature_c":20}}',
        b'{"device_id":"sensor-1","data":{"temperature_c":"20"}}',
        b'{"device_id":"sensor-1","data":{"temperature_c":true}}',
        b'{"device_id":"sensor-1","data":{"Bad-Name":1}}',
        b'{"device_id":"sensor-1","data":{"temperature_c":20}',
        b"[]",
        b"\xff\xfe",
    ],
)
def test_fast_and_usual_telemetry_parsing_agree(payload: bytes) -> None:
    same_either_way(payload)


@settings(max_examples=300, deadline=None)
@given(near_miss)
def test_fast_and_usual_telemetry_parsing_agree_on_garbage(doc: dict[str, Any]) -> None:
    same_either_way(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fast_and_usual_telemetry_parsing_agree_on_bytes(payload: bytes) -> None:
    same_either_way(payload)
