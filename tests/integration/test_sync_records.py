"""Every outbox record kind, edge to cloud: made on a real edge store, encoded by the edge's encoder
(edge/store/outbox/records.py, edge/batch_body.py), decoded by the cloud's decoder
(cloud/sync/decode.py), field by field; and the tables that name the kinds (shared.sync, the
SQL triggers' numeric codes, the cloud's items and decoder structs) held to one another, so a kind
added in one place without the others fails here."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Union, get_args

import msgspec
import pytest
from pydantic import BaseModel

from cloud.sync import decode
from cloud.sync.records import ITEMS
from edge.automation_report import AutomationReporter
from edge.batch_body import BatchEncoder
from edge.store import commands as command_rows
from edge.store import outbox as rows
from edge.store import pending as pending_rows
from edge.store.db import load_migrations, migrate
from shared.models import utcnow
from shared.sync import (
    KIND_CODES,
    KIND_NAMES,
    RECORD_DATA,
    RECORD_KINDS,
    RECORD_TYPES,
    ConfigEdit,
    OutboxRecord,
    Record,
)
from tests.integration.test_outbox import T0, Edge, build_edge, close_edge, make_settings

# Fields of shared.sync's data types the cloud does not keep, on purpose (and only these).
NOT_KEPT = {
    ("config_change", "change.stage_started"),  # the cloud restarts the stage clock itself
}
_ANY_RECORD = msgspec.json.Decoder(Union[tuple(RECORD_TYPES.values())])  # noqa: UP007


@pytest.fixture
async def edge(farm_id: str, tmp_path: Path) -> AsyncIterator[Edge]:
    built = await build_edge(make_settings(farm_id, tmp_path), tmp_path / "edge.db")
    yield built
    await close_edge(built)


async def one_of_each_kind(edge: Edge) -> None:
    """At least one record of every kind, through the store's own paths (triggers and all)."""
    await edge.telemetry("sens-a", temperature_c=18.5, humidity_pct=91)
    await edge.message("telemetry", "sens-a", b"{not json")  # quarantine
    await edge.message("status", "hum-a", {"device_id": "hum-a", "online": True,
                                           "state": {"on": False}})
    await edge.db.write(rows.link_cloud_command, "cloud-cmd-1", "cmd-linked", "delivered", T0)
    await edge.db.write(lambda conn: command_rows.insert_command(
        conn, command_id="cmd-linked", device_id="fan-a", room_id="room-a", action="set",
        value=0.5, source="cloud", reason="from the cloud", created_at=T0,
    ))
    cid = await edge.automation.manual_command("hum-a", "on", by="tester")
    await edge.message("ack", "hum-a", {"command_id": cid, "status": "error", "error": "jam"})
    await edge.alerts.raise_alert("test:1", kind="test", message="first")
    await edge.alerts.resolve("test:1")
    await edge.automation.set_stage("room-b", "fruiting")
    rule = edge.automation.rules("room-a")[0].id
    await edge.automation.set_rule_enabled(rule, False)
    # The rooms' effective automation (a hold and a safety limit in it: every field non-empty).
    assert await AutomationReporter(edge.automation, clock=utcnow).report(force=True) >= 1
    # Two readings of one minute, merged into one by the backlog cap policy (``downsampled``).
    base = (int(T0) // 60) * 60 + 60.0
    for offset in (1.0, 2.0):
        await edge.telemetry("sens-b", ts=datetime.fromtimestamp(base + offset, UTC),
                             co2_ppm=800 + offset)
    await edge.settle()
    # A device that knocked with the claim code, adopted (every field set).
    await edge.db.write(pending_rows.save, pending_rows.PendingDevice(
        device_id="esp-a1b2c3", state="adopted", first_seen=T0, last_seen=T0 + 5, attempts=3,
        address="192.168.1.40", client_id="esp-a1b2c3-3c71bf", room_id="room-a",
        updated_at=T0 + 6, kind="actuator", actuator="heater"), True)
    merged = await edge.db.write(rows.downsample, 0, 100, 60.0)
    assert merged.removed == 1
    await edge.settle()


def _fields(value: Any) -> dict[str, Any]:
    if isinstance(value, msgspec.Struct):
        return {name: getattr(value, name) for name in value.__struct_fields__}
    assert isinstance(value, BaseModel)
    return {name: getattr(value, name) for name in type(value).model_fields}


def _compare(kind: str, sent: msgspec.Struct, got: Any, prefix: str = "") -> None:
    """Every field the edge sent is what the cloud decoded (or one it does not keep)."""
    theirs = _fields(got)
    for name, value in _fields(sent).items():
        where = f"{prefix}{name}"
        if (kind, where) in NOT_KEPT:
            continue
        if value is None and isinstance(sent, ConfigEdit):  # the other edit's field
            assert theirs.get(name) is None, f"{kind}: {where}"
            continue
        assert name in theirs, f"{kind}: the cloud has no field {where}"
        if isinstance(value, msgspec.Struct):
            _compare(kind, value, theirs[name], f"{where}.")
        elif isinstance(value, list) and value and isinstance(value[0], msgspec.Struct):
            assert len(theirs[name]) == len(value), f"{kind}: {where}"
            for i, (mine, other) in enumerate(zip(value, theirs[name], strict=True)):
                _compare(kind, mine, other, f"{where}[{i}].")
        else:
            assert theirs[name] == value, f"{kind}: {where}: {theirs[name]!r} != {value!r}"


async def test_every_kind_goes_edge_to_cloud_field_by_field(edge: Edge, farm_id: str) -> None:
    await one_of_each_kind(edge)
    prepared = await edge.db.read(rows.prepare_new, rows.SeriesCache(), 5_000, 10**8, T0)
    assert prepared is not None
    sent: list[Record] = [_ANY_RECORD.decode(r) for r in prepared.records]
    assert {r.kind for r in sent} == set(RECORD_KINDS), "a kind no store path makes"
    assert any("downsampled" in json.loads(r)["data"] for r in prepared.records)

    raw = BatchEncoder("edge-1", farm_id, utcnow).json(prepared.first_seq, prepared.records)
    fast, general = decode._fast(raw), decode._general(raw)  # the fast path takes it whole
    for decoded in (fast, general):
        assert (decoded.first_seq, decoded.last_seq) == (prepared.first_seq, prepared.last_seq)
        assert len(decoded.parsed) == len(sent)
        for record, parsed in zip(sent, decoded.parsed, strict=True):
            assert parsed.error is None, f"{record.kind}: {parsed.error}"
            assert (parsed.record.seq, parsed.record.kind, parsed.record.at) == (
                record.seq, record.kind, record.at)
            assert isinstance(parsed.item, ITEMS[record.kind])
            _compare(record.kind, record.data, parsed.item)  # type: ignore[attr-defined]


async def test_the_triggers_rows_fit_their_kinds_types_exactly(edge: Edge) -> None:
    """The JSON the SQL triggers write has exactly the fields of its kind's type: no field the
    type would drop on the way up, none it lacks."""
    await one_of_each_kind(edge)
    found = edge.query("SELECT kind, data FROM outbox WHERE data IS NOT NULL")
    assert {KIND_NAMES[r["kind"]] for r in found} == set(KIND_CODES) - {"quarantine"}
    for row in found:
        kind = KIND_NAMES[row["kind"]]
        data_type = RECORD_DATA[kind]
        doc = json.loads(row["data"])
        msgspec.convert(doc, data_type)  # fits the type
        required = {f.name for f in msgspec.structs.fields(data_type) if f.required}
        known = {f.name for f in msgspec.structs.fields(data_type)}
        assert required <= doc.keys() <= known, f"{kind}: {sorted(doc)}"


def test_every_kind_has_a_type_a_code_an_item_and_a_decoder() -> None:
    kinds = set(RECORD_KINDS)
    assert get_args(OutboxRecord.model_fields["kind"].annotation) == RECORD_KINDS
    assert set(RECORD_TYPES) == set(RECORD_DATA) == kinds
    assert all(RECORD_TYPES[k].kind == k for k in kinds)
    assert set(KIND_CODES) == kinds - {"reading"}  # readings are their own table
    assert len(set(KIND_CODES.values())) == len(KIND_CODES)
    assert set(ITEMS) == kinds, "a kind without a cloud item (cloud/sync/records.py)"
    assert set(decode._RECORDS) == kinds, "a kind without a fast-path struct"
    for kind, data_type in RECORD_DATA.items():
        item = ITEMS[kind]
        ours = {f.name for f in msgspec.structs.fields(data_type)}
        theirs = (set(item.__struct_fields__) if issubclass(item, msgspec.Struct)
                  else set(item.model_fields))
        assert ours == theirs, f"{kind}: edge {sorted(ours)} != cloud {sorted(theirs)}"


# (table, event) a trigger fires on -> the kind its outbox row must be.
TRIGGER_KINDS = {
    ("quarantine", "INSERT"): "quarantine",
    ("commands", "INSERT"): "command",
    ("commands", "UPDATE"): "command_state",
    ("alerts", "INSERT"): "alert",
    ("alerts", "UPDATE"): "alert",
    ("device_status", "INSERT"): "status",
    ("device_status", "UPDATE"): "status",
    ("automation_state", "INSERT"): "config_change",
    ("automation_state", "UPDATE"): "config_change",
    ("automation_state", "DELETE"): "config_change",
}
_EVENT = re.compile(r"\bAFTER\s+(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_CODE = re.compile(r"INSERT INTO outbox\s*\(kind,[^)]*\)\s*VALUES\s*\((\d+)\s*,", re.IGNORECASE)


def test_the_sql_triggers_write_shared_kind_codes() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        migrate(conn, load_migrations())
        triggers = conn.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    finally:
        conn.close()
    seen: set[str] = set()
    for name, table, sql in triggers:
        codes = [int(c) for c in _CODE.findall(sql)]
        if "INSERT INTO outbox" not in sql:
            continue
        event = _EVENT.search(sql)
        assert event is not None and codes, f"{name}: cannot read its event or kind code"
        expected = TRIGGER_KINDS[(table, event.group(1).upper())]
        assert [KIND_NAMES.get(c) for c in codes] == [expected], f"trigger {name}: codes {codes}"
        seen.add(expected)
    # Acks and automation reports have no table: edge/store/outbox/cursor.py appends them by type.
    assert seen | {"ack", "automation", "pending_device"} == set(KIND_CODES)
