"""Automation rules of a room: the ``shared.rules`` model, validated before it is stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out
from cloud.db import audit
from cloud.db import automation_state as automation_db
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


# ---- the room's effective automation, as its edge runs it ----

SAFETY_WORDS = {
    "min_on": "minimum on-time",
    "min_off": "minimum off-time",
    "max_on": "maximum on-time reached",
    "max_duty": "maximum share of the hour reached",
    "rest_after_max_on": "resting after its maximum on-time",
}


class EffectiveRule(Out):
    id: str
    actuator: str
    type: str
    enabled: bool
    source: Literal["profile", "cloud", "local"] = Field(
        description="profile: made from the species and stage; cloud: a rule stored here; local:"
        " from the edge's own config file"
    )
    overrides: bool = Field(description="replaces the profile rule of the same id")
    rule: dict[str, Any] = Field(description="the whole rule (shared.rules.Rule)")
    cloud_version: int | None = Field(description="the stored cloud rule's version, if any")
    applied: bool = Field(
        description="false: a cloud rule the edge does not run yet (saved, on its way)"
    )


class HoldState(Out):
    on: bool
    until: datetime
    by: str
    source: str | None = Field(
        description="where it was asked: cloud, manual (the edge's own page), homeassistant…"
    )


class SafetyHoldState(Out):
    on: bool
    reason: str
    until: datetime | None
    detail: str
    text: str = Field(description='in words, e.g. "on: minimum on-time"')


class PendingHold(Out):
    command_id: str
    action: str
    hold_minutes: float | None
    status: str
    error: str | None
    by: str | None
    created_at: datetime


class ActuatorStateOut(Out):
    device_id: str
    name: str
    role: str | None
    on: bool | None
    since: datetime | None
    mode: Literal["auto", "hold", "safety", "unknown"]
    hold: HoldState | None
    safety_hold: SafetyHoldState | None
    safety: dict[str, Any]
    reason: str | None
    last_hold: PendingHold | None = Field(description="the newest hold or back-to-auto sent")


class SeenOut(Out):
    device_id: str
    name: str
    kind: str
    last_seen: datetime | None


class AutomationStateOut(Out):
    room_id: str
    reported: bool = Field(description="false until the room's edge has reported")
    reported_at: datetime | None
    received_at: datetime | None
    edge_id: str | None
    stage: str | None
    rules: list[EffectiveRule]
    actuators: list[ActuatorStateOut]
    devices: list[SeenOut]


def _ts(value: Any) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(value), UTC)


async def automation_state(call: Call) -> AutomationStateOut:
    """The room's effective automation: every rule its edge runs with its source, each
    actuator's state, manual hold and safety hold, and devices' last message of any kind"""
    room_id = call.param("room_id")
    report = await automation_db.get(call.db, call.farm_id, room_id)
    devices = await automation_db.devices(call.db, call.farm_id, room_id)
    holds = await automation_db.last_holds(call.db, call.farm_id, room_id)
    cloud_rules = {
        r["id"]: r
        for r in await rules_db.list_rules(call.db, call.farm_id, room_id, after=None, limit=500)
    }
    state: dict[str, Any] = report["state"] if report else {}
    now = datetime.now(UTC)
    rules: list[EffectiveRule] = []
    for r in state.get("rules", []):
        stored = cloud_rules.get(r["id"])
        rules.append(EffectiveRule(
            **r, cloud_version=stored["version"] if stored else None, applied=True))
    running = {r.id for r in rules}
    for rule_id, stored in cloud_rules.items():
        if rule_id not in running:
            body = stored["body"]
            rules.append(EffectiveRule(
                id=rule_id, actuator=body.get("actuator", ""), type=body.get("type", ""),
                enabled=body.get("enabled", True), source="cloud", overrides=False, rule=body,
                cloud_version=stored["version"], applied=False))
    reported = {a["device_id"]: a for a in state.get("actuators", [])}
    actuators = []
    for d in devices:
        if d["kind"] != "actuator":
            continue
        a = reported.get(d["id"])
        hold = safety_hold = None
        mode: Literal["auto", "hold", "safety", "unknown"] = "unknown"
        if a is not None:
            mode = "auto"
            if a.get("hold") and _ts(a["hold"]["until"]) > now:  # type: ignore[operator]
                h = a["hold"]
                hold = HoldState(on=h["on"], until=_ts(h["until"]), by=h["by"],  # type: ignore[arg-type]
                                 source=h.get("source"))
                mode = "hold"
            sh = a.get("safety_hold")
            if sh and (sh.get("until") is None or _ts(sh["until"]) > now):  # type: ignore[operator]
                words = SAFETY_WORDS.get(sh["reason"], sh["reason"])
                safety_hold = SafetyHoldState(
                    on=sh["on"], reason=sh["reason"], until=_ts(sh.get("until")),
                    detail=sh.get("detail", ""), text=f"{'on' if sh['on'] else 'off'}: {words}")
                if mode == "auto":
                    mode = "safety"
        last = holds.get(d["id"])
        actuators.append(ActuatorStateOut(
            device_id=d["id"], name=d["name"], role=d["actuator"],
            on=a["on"] if a else None, since=_ts(a.get("since")) if a else None, mode=mode,
            hold=hold, safety_hold=safety_hold,
            safety=(a or {}).get("safety") or d["safety"] or {},
            reason=a.get("reason") if a else None,
            last_hold=PendingHold(
                command_id=last["id"], action=last["action"], hold_minutes=last["hold_minutes"],
                status=last["status"], error=last["error"], by=last["by_name"],
                created_at=last["created_at"]) if last else None,
        ))
    return AutomationStateOut(
        room_id=room_id, reported=report is not None,
        reported_at=report["reported_at"] if report else None,
        received_at=report["received_at"] if report else None,
        edge_id=report["edge_id"] if report else None, stage=state.get("stage"),
        rules=rules, actuators=actuators,
        devices=[SeenOut(device_id=d["id"], name=d["name"], kind=d["kind"],
                         last_seen=d["last_seen"]) for d in devices],
    )


_BASE = "/api/rooms/{room_id}/automation"
ROUTES = [
    Route(
        "GET",
        "/api/rooms/{room_id}/automation-state",
        automation_state,
        "room",
        response=AutomationStateOut,
        tag="automation",
    ),
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
