"""The prompt a language model gets for one room, and the parsing of its JSON answer.

The room's facts travel as one JSON document (species, stage and day, targets, the window's
statistics, trends and time in band, actuator duty cycles, alerts, recent actions, rules); the
answer must be one JSON object, validated with pydantic before anything is stored. Actions the
model proposes are checked against the room's real devices later (``cloud.ai.actions``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud.ai.models import RoomContext, Suggestion

SYSTEM = """You are the cultivation advisor of a mushroom farm. You get the last hours of one \
grow room as JSON: species, grow stage and its day, the target bands of the stage, statistics \
and trends of each metric (time_in_band is the share of minutes inside the band; drift is the \
second half's mean minus the first half's), the actuators with their duty cycles (share of time \
on) and switch counts, active and recent alerts, recent manual actions and the automation rules.

Answer with ONE JSON object and nothing else, shaped as:
{"recommendations": [{"key": "...", "severity": "info|warning|critical", "title": "...", \
"reason": "...", "action": null | {"kind": "command", "device_id": "...", \
"action": "on|off|set", "value": null} | {"kind": "rule", "rule": {...}}}]}

Rules for the answer:
- At most {max_items} recommendations, most important first; none when all is well except one \
"info" saying so.
- key: short, lowercase, stable for the same condition (e.g. "humidity-low").
- reason: cite the figures that support it (means, trends, duty cycles, targets).
- action: only when one command or one rule fixes it, using device ids and rule ids from the \
input; rules use the same JSON shape as the input's rules. Otherwise null (for inspections such \
as "check the humidifier's water").
- Do not invent devices, metrics or figures."""


class Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    recommendations: list[Suggestion] = Field(max_length=50)


class MalformedAnswer(ValueError):
    """The model's text is not the JSON object asked for."""


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def system_prompt(max_items: int) -> str:
    return SYSTEM.replace("{max_items}", str(max_items))


def user_message(ctx: RoomContext) -> str:
    facts = ctx.model_dump(mode="json", exclude_none=True)
    return "Room data:\n" + json.dumps(facts, separators=(",", ":"), sort_keys=True)


def parse_answer(text: str, *, max_items: int) -> list[Suggestion]:
    """The suggestions in a model's answer; MalformedAnswer says what is wrong with it."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if not body.startswith("{"):
        # Some models add a sentence around the object: take the outermost braces.
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            raise MalformedAnswer("no JSON object in the answer")
        body = body[start : end + 1]
    try:
        doc: Any = json.loads(body)
    except ValueError as exc:
        raise MalformedAnswer(f"invalid JSON: {exc}") from None
    try:
        answer = Answer.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise MalformedAnswer(f"unexpected shape at {where or 'top level'}: {err['msg']}") from None
    return answer.recommendations[:max_items]
