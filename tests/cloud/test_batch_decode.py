"""The batch decoder (cloud/sync/decode.py): the fast path gives what the general path gives,
record for record, and hands everything it does not take whole to the general path (no I/O)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pydantic import ValidationError

from cloud.sync import decode
from cloud.sync.decode import DecodedBatch, decode_batch
from cloud.sync.records import ReadingItem

NOW = time.time()


def reading(seq: int, **data: Any) -> dict[str, Any]:
    body = {"device_id": "sens-1", "room_id": "room-1", "ts": NOW - 60 + seq, "ts_replaced": False,
            "values": {"co2_ppm": 400.5 + seq, "temperature_c": 18}}
    body.update(data)
    return {"seq": seq, "kind": "reading", "at": NOW - 59 + seq, "data": body}


def body(records: list[dict[str, Any]], **over: Any) -> bytes:
    doc = {"protocol": 1, "edge_id": "edge-1", "farm_id": "farm-1", "first_seq": records[0]["seq"],
           "last_seq": records[-1]["seq"], "sent_at": "2026-01-01T00:00:00+00:00",
           "records": records, **over}
    return json.dumps(doc).encode()


def outcome(batch: DecodedBatch) -> list[tuple[int, str, Any, str | None]]:
    out = []
    for p in batch.parsed:
        item = p.item
        shown = (item.device_id, item.room_id, item.ts, item.values, item.ts_replaced) \
            if isinstance(item, ReadingItem) else item
        out.append((p.record.seq, p.record.kind, shown, p.error))
    return out


def both(raw: bytes) -> tuple[DecodedBatch, DecodedBatch, bool]:
    """(decode_batch's answer, the general path's, whether the fast path took it)."""
    try:
        fast, took = decode._fast(raw), True
    except decode._NotFast:
        fast, took = decode_batch(raw), False
    return fast, decode._general(raw), took


ALERT = {"seq": 3, "kind": "alert", "at": NOW, "data": {
    "key": "k", "kind": "sensor_silent", "severity": "warning", "message": "quiet",
    "room_id": "room-1", "state": "active", "at": NOW}}


@pytest.mark.parametrize(("records", "fast", "kept_bad"), [
    ([reading(1), reading(2)], True, 0),
    ([reading(1), reading(2, downsampled={"n": 3, "period_s": 60.0}), ALERT], True, 0),
    ([reading(1), {**ALERT, "seq": 2, "data": {"key": "k"}}], True, 1),  # a bad alert
    ([reading(1, ts="2026-01-01T00:00:00Z")], False, 0),  # ISO time: the general path's
    ([reading(1, values={"co2_ppm": "high"}), reading(2)], False, 1),
    ([reading(1, values={"co2_ppm": True})], False, 1),
    ([reading(1, values={})], False, 1),
    ([reading(1, values={"CO2": 1.0})], False, 1),
    ([reading(1, device_id="sens 1")], False, 1),
    ([reading(1, device_id="sens-1\n")], False, 1),
    ([reading(1, values={f"m{i}": 1.0 for i in range(65)})], False, 1),
])
def test_the_fast_path_agrees_with_the_general_path(
    records: list[dict[str, Any]], fast: bool, kept_bad: int
) -> None:
    got, general, took = both(body(records))
    assert took is fast
    assert (got.edge_id, got.farm_id, got.first_seq, got.last_seq, got.sent_at) == (
        general.edge_id, general.farm_id, general.first_seq, general.last_seq, general.sent_at)
    assert outcome(got) == outcome(general)
    # A bad record is kept (to be quarantined) with its reason, the batch is not refused.
    assert sum(1 for p in got.parsed if p.error) == kept_bad


@pytest.mark.parametrize(("raw", "field"), [
    (body([reading(1), reading(3)]), "body"),  # not contiguous
    (body([reading(1)], last_seq=2), "body"),
    (body([reading(1)], protocol="one"), "body.protocol"),
    (body([reading(1)], edge_id="no spaces"), "body.edge_id"),
    (body([reading(1)], extra=1), "body.extra"),
    (body([{**reading(1), "kind": "telepathy"}]), "body.records.0.kind"),
    (body([reading(0)]), "body.first_seq"),
])
def test_what_is_not_a_batch_is_refused_naming_the_field(raw: bytes, field: str) -> None:
    from shared.problems import field_errors

    with pytest.raises(ValidationError) as caught:
        decode_batch(raw)
    named = [e["field"] for e in field_errors(caught.value, "body")]
    assert any(f.startswith(field) for f in named), named


def test_broken_json_is_json_invalid() -> None:
    with pytest.raises(ValidationError) as caught:
        decode_batch(b'{"records": [')
    assert caught.value.errors()[0]["type"] == "json_invalid"
