"""Automation rules of a room: the ``shared.rules`` model, validated before it is stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError

from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out
from cloud.db import audit
from cloud.db import devices as devices_db
from cloud.db import rules as rules_db
from cloud.errors import Conflict, NotFound, ValidationFailed
from shared.rules import Rule

RULE: TypeAdapter[Any] = TypeAdapter(Rule)  # type: ignore[arg-type,unused-ignore]


class RulePatch(In):
    """A JSON merge of fields into the stored rule; the result is validated as a whole."""

    changes: dict[str, Any] = Field(
        description='fields to change, e.g. {"enabled": false} or {"on_below": 82}'
    )
    version: int | None = Field(
        default=None, ge=1, description="the version you read; 409 when it changed since"
    )


class RuleOut(Out):
    id: str
    room_id: str
    version: int
    rule: Rule
    created_at: datetime
    updated_at: datetime


def _out(row: dict[str, Any]) -> RuleOut:
    return RuleOut.model_validate({**row, "rule": row["body"]})


async def _check_actuator(call: Call, rule: Any, room_id: str) -> None:
    if rule.room_id != room_id:
        raise ValidationFailed(
            [{"field": "body.room_id", "message": "must be this room", "type": "value_error"}]
        )
    device = await devices_db.get(call.db, call.farm_id, rule.actuator)
    if device is None or device["room_id"] != room_id or device["kind"] != "actuator":
        raise ValidationFailed(
            [
                {
                    "field": "body.actuator",
                    "message": "not an actuator in this room",
                    "type": "value_error",
                }
            ]
        )


async def list_rules(call: Call) -> Page[RuleOut]:
    """List a room's automation rules"""
    q: PageQuery = call.query
    after = decode_cursor(q.cursor, str)
    rows = await rules_db.list_rules(
        call.db,
        call.farm_id,
        call.param("room_id"),
        after=after[0] if after else None,
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[RuleOut](items=[_out(r) for r in rows], next_cursor=cursor)


async def create_rule(call: Call) -> RuleOut:
    """Add an automation rule (threshold, schedule or PID) to a room"""
    rule = call.body
    room_id = call.param("room_id")
    await _check_actuator(call, rule, room_id)
    body = rule.model_dump(mode="json")
    row = await rules_db.create(call.db, call.farm_id, room_id, rule.id, body, call.user_id)
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="rule.create",
        target=f"{room_id}/{rule.id}",
        detail=body,
    )
    return _out(row)


async def get_rule(call: Call) -> RuleOut:
    """Read one automation rule"""
    row = await rules_db.get(call.db, call.farm_id, call.param("room_id"), call.param("rule_id"))
    if row is None:
        raise NotFound("rule not found")
    return _out(row)


async def update_rule(call: Call) -> RuleOut:
    """Change fields of a rule (merged, then validated as a whole; version bumps)"""
    patch: RulePatch = call.body
    room_id, rule_id = call.param("room_id"), call.param("rule_id")
    row = await rules_db.get(call.db, call.farm_id, room_id, rule_id)
    if row is None:
        raise NotFound("rule not found")
    if "id" in patch.changes or "room_id" in patch.changes:
        raise ValidationFailed(
            [
                {
                    "field": "body.changes",
                    "message": "id and room_id cannot change",
                    "type": "value_error",
                }
            ]
        )
    try:
        rule = RULE.validate_python({**row["body"], **patch.changes})
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc, "body.changes") from None
    await _check_actuator(call, rule, room_id)
    body = rule.model_dump(mode="json")
    updated = await rules_db.update(
        call.db, call.farm_id, room_id, rule_id, body, version=patch.version, user_id=call.user_id
    )
    if updated is None:
        raise Conflict("the rule changed since you read it (version mismatch)")
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="rule.update",
        target=f"{room_id}/{rule_id}",
        detail=patch.changes,
    )
    return _out(updated)


async def delete_rule(call: Call) -> None:
    """Delete an automation rule"""
    room_id, rule_id = call.param("room_id"), call.param("rule_id")
    if not await rules_db.delete(call.db, call.farm_id, room_id, rule_id):
        raise NotFound("rule not found")
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="rule.delete",
        target=f"{room_id}/{rule_id}",
    )


_BASE = "/api/rooms/{room_id}/automation"
ROUTES = [
    Route(
        "GET", _BASE, list_rules, "room", query=PageQuery, response=Page[RuleOut], tag="automation"
    ),
    Route(
        "POST",
        _BASE,
        create_rule,
        "room",
        role="operator",
        body=Rule,
        response=RuleOut,
        status=201,
        tag="automation",
        errors=(409, 422),
    ),
    Route("GET", _BASE + "/{rule_id}", get_rule, "room", response=RuleOut, tag="automation"),
    Route(
        "PATCH",
        _BASE + "/{rule_id}",
        update_rule,
        "room",
        role="operator",
        body=RulePatch,
        response=RuleOut,
        tag="automation",
        errors=(409, 422),
    ),
    Route(
        "DELETE",
        _BASE + "/{rule_id}",
        delete_rule,
        "room",
        role="operator",
        status=204,
        tag="automation",
    ),
]
