"""Suggested actions: checked against the room's real devices before a recommendation is stored
(a language model may name a device that does not exist), and applied when the user accepts.

Applying a command stores it ``pending`` for the edge sync to deliver, like a manual command; a
rule is created, or replaces the rule with its id (version bumped), like an edit in the API.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from cloud.ai.models import CommandAction, RuleAction
from cloud.db import audit
from cloud.db import commands as commands_db
from cloud.db import rules as rules_db
from cloud.db.database import Database
from shared.errors import SmartfarmError
from shared.rules import Rule

# mypy 1.20 loses the TypeForm of an Annotated union alias read from its cache (arg-type
# there, none without a cache): ignore it either way.
RULE: TypeAdapter[Any] = TypeAdapter(Rule)  # type: ignore[arg-type,unused-ignore]
DEVICES = """
SELECT id, kind, actuator FROM devices WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
ORDER BY id"""


class ActionRejected(SmartfarmError):
    """The action does not fit the room (any more): unknown device, invalid rule."""


async def room_devices(db: Database, farm_id: str, room_id: str) -> list[dict[str, Any]]:
    return await db.fetch_all(DEVICES, {"farm_id": farm_id, "room_id": room_id})


def checked(
    action: CommandAction | RuleAction | None, room_id: str, devices: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """The action as stored (JSON), made concrete for this room; ActionRejected says why not."""
    if action is None:
        return None
    actuators = {d["id"]: d["actuator"] for d in devices if d["kind"] == "actuator"}
    if isinstance(action, CommandAction):
        device = action.device_id
        if device is None:
            by_role = [i for i, role in actuators.items() if role == action.actuator_role]
            if len(by_role) != 1:
                raise ActionRejected(f"no single {action.actuator_role} in room {room_id}")
            device = by_role[0]
        if device not in actuators:
            raise ActionRejected(f"{device} is not an actuator in room {room_id}")
        if action.action == "set" and action.value is None:
            raise ActionRejected("`set` needs a value 0-100")
        return CommandAction(
            device_id=device,
            actuator_role=actuators[device],
            action=action.action,
            value=action.value if action.action == "set" else None,
        ).model_dump(mode="json")
    try:
        rule = RULE.validate_python({**action.rule, "room_id": room_id})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ActionRejected(f"invalid rule at {where}: {err['msg']}") from None
    if rule.actuator not in actuators:
        raise ActionRejected(f"rule drives {rule.actuator}, not an actuator in room {room_id}")
    return RuleAction(rule=rule.model_dump(mode="json")).model_dump(mode="json")


async def apply(
    db: Database,
    *,
    room_id: str,
    farm_id: str,
    action: dict[str, Any],
    user_id: int,
    recommendation_id: int,
) -> dict[str, Any]:
    """Carry out a stored action (re-checked: the room may have changed since); what was done."""
    devices = await room_devices(db, farm_id, room_id)
    parsed: CommandAction | RuleAction = (
        CommandAction.model_validate(action)
        if action.get("kind") == "command"
        else RuleAction.model_validate(action)
    )
    concrete = checked(parsed, room_id, devices)
    assert concrete is not None
    source = {"recommendation_id": recommendation_id}
    if concrete["kind"] == "command":
        command_id = f"ai-{recommendation_id}-{secrets.token_hex(4)}"
        await commands_db.create(
            db,
            command_id=command_id,
            farm_id=farm_id,
            room_id=room_id,
            device_id=concrete["device_id"],
            action=concrete["action"],
            value=concrete["value"],
            user_id=user_id,
        )
        await audit.record(
            db,
            user_id=user_id,
            farm_id=farm_id,
            action="command.create",
            target=command_id,
            detail={**source, "device_id": concrete["device_id"], "action": concrete["action"]},
        )
        return {"kind": "command", "command_id": command_id}
    rule = concrete["rule"]
    verb, row = "rule.update", None
    if await rules_db.get(db, farm_id, room_id, rule["id"]) is not None:
        row = await rules_db.update(
            db, farm_id, room_id, rule["id"], rule, version=None, user_id=user_id
        )
    if row is None:  # new (or deleted between the two statements)
        row = await rules_db.create(db, farm_id, room_id, rule["id"], rule, user_id)
        verb = "rule.create"
    await audit.record(
        db,
        user_id=user_id,
        farm_id=farm_id,
        action=verb,
        target=f"{room_id}/{rule['id']}",
        detail={**source, **rule},
    )
    return {"kind": "rule", "rule_id": rule["id"], "version": row["version"]}
