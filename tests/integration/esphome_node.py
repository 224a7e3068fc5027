"""Read a generated ESPHome node file the way ESPHome does (YAML, ``!secret``, ``${substitutions}``)
and run the JSON its lambdas build: a strict evaluator of exactly the statement forms the
generator writes. Any other statement fails the test, so a lambda edited into something this
does not understand cannot pass unnoticed."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml


@dataclass(frozen=True)
class Secret:
    name: str


class _Loader(yaml.SafeLoader):
    pass


def _secret(loader: yaml.SafeLoader, node: yaml.Node) -> Secret:
    assert isinstance(node, yaml.ScalarNode)
    return Secret(str(loader.construct_scalar(node)))


_Loader.add_constructor("!secret", _secret)


@dataclass(frozen=True)
class Lambda:
    """A ``!lambda`` value (C++ the node runs; the tests read its text)."""

    code: str


def _lambda(loader: yaml.SafeLoader, node: yaml.Node) -> Lambda:
    assert isinstance(node, yaml.ScalarNode)
    return Lambda(str(loader.construct_scalar(node)))


_Loader.add_constructor("!lambda", _lambda)


def load_node(text: str, secrets: dict[str, str] | None = None) -> dict[str, Any]:
    """The node file as a dict, substitutions applied and secrets filled from ``secrets``."""
    doc = yaml.load(text, Loader=_Loader)
    subs = {k: str(v) for k, v in (doc.pop("substitutions", None) or {}).items()}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, Secret):
            if secrets is None or value.name not in secrets:
                return value
            return secrets[value.name]
        if isinstance(value, str):
            return re.sub(r"\$\{(\w+)\}", lambda m: subs[m.group(1)], value)
        return value

    result: dict[str, Any] = walk(doc)
    return result


@dataclass
class Env:
    """What a lambda sees: sensor states (None: no state yet), the SNTP clock (None: not set),
    plain variables of the command handler, globals (``id(level)``)."""

    sensors: dict[str, float | None] = field(default_factory=dict)
    now: datetime | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    globals: dict[str, float] = field(default_factory=dict)


_ID_STATE = re.compile(r"^id\((\w+)\)\.state$")
_HAS = re.compile(r"^\(id\((\w+)\)\.has_state\(\) && !std::isnan\(id\((\w+)\)\.state\)\)$")
_ASSIGN = re.compile(r'^(\w+)\["(\w+)"\] = (.+);$')
_NESTED = re.compile(r'^JsonObject (\w+) = (\w+)\["(\w+)"\]\.to<JsonObject>\(\);$')
_IF = re.compile(r"^if (\(.+?\)\)?) (\w+\[.+)$")


def _expr(text: str, env: Env) -> Any:
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    if m := _ID_STATE.match(text):
        value = env.sensors[m.group(1)]
        assert value is not None, f"{text} used without a state"
        return value
    if m := re.fullmatch(r"roundf\((.+)\)", text):
        inner = re.fullmatch(r"(.+) \* 1000\.0f", m.group(1))
        if inner:
            return round(_expr(inner.group(1), env) * 1000.0)
        return float(round(_expr(m.group(1), env)))
    if m := re.fullmatch(r"(.+) / 10\.0f", text):
        return _expr(m.group(1), env) / 10.0
    if m := re.fullmatch(r"id\((\w+)\) > 0\.0f", text):
        return env.globals[m.group(1)] > 0.0
    if m := re.fullmatch(r"id\((\w+)\)", text):
        return env.globals[m.group(1)]
    if m := re.fullmatch(r'now\.strftime\("([^"]+)"\)', text):
        assert env.now is not None
        return env.now.strftime(m.group(1))
    if m := re.fullmatch(r'(\w+)\.empty\(\) \? "(\w+)" : "(\w+)"', text):
        return m.group(2) if not env.variables[m.group(1)] else m.group(3)
    if re.fullmatch(r"[a-z_]+", text) and text in env.variables:
        return env.variables[text]
    raise AssertionError(f"unsupported expression in a lambda: {text!r}")


def _cond(text: str, env: Env) -> bool:
    if m := _HAS.match(text):
        assert m.group(1) == m.group(2), text
        return env.sensors.get(m.group(1)) is not None
    if text == "(now.is_valid())":
        return env.now is not None
    if m := re.fullmatch(r"\(!(\w+)\.empty\(\)\)", text):
        return bool(env.variables[m.group(1)])
    raise AssertionError(f"unsupported condition in a lambda: {text!r}")


def run_json_lambda(body: str, env: Env) -> dict[str, Any]:
    """The JSON object a ``[](JsonObject root) {...}`` body builds."""
    objects: dict[str, dict[str, Any]] = {"root": {}}
    for raw in body.strip().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line == "auto now = id(sntp_time).utcnow();":
            continue
        if m := _NESTED.match(line):
            child: dict[str, Any] = {}
            objects[m.group(2)][m.group(3)] = child
            objects[m.group(1)] = child
            continue
        if line.startswith("if "):
            m = _IF.match(line)
            assert m, f"unsupported if in a lambda: {line!r}"
            cond, line = m.group(1), m.group(2)
            if not _cond(cond, env):
                continue
        m = _ASSIGN.match(line)
        assert m, f"unsupported statement in a lambda: {line!r}"
        objects[m.group(1)][m.group(2)] = _expr(m.group(3), env)
    return objects["root"]


def ack_block(command_lambda: str) -> str:
    """The body of the ack the command handler publishes."""
    m = re.search(r'publish_json\("([^"]+)", \[=\]\(JsonObject root\) \{\n(.*?)\n\}, 1, false\);',
                  command_lambda, re.S)
    assert m, "the command handler publishes no ack"
    return m.group(2)


def ack_topic(command_lambda: str) -> str:
    m = re.search(r'publish_json\("([^"]+)"', command_lambda)
    assert m
    return m.group(1)


def command_fields(command_lambda: str) -> set[str]:
    """The command fields the handler reads."""
    return set(re.findall(r'x\["(\w+)"\]', command_lambda))


def script(node: dict[str, Any], script_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in node["script"] if s["id"] == script_id)
    return found


def publish_action(node: dict[str, Any], script_id: str) -> dict[str, Any]:
    """The ``mqtt.publish_json`` of a publishing script (inside its ``if``)."""
    then = script(node, script_id)["then"][0]["if"]["then"]
    action: dict[str, Any] = then[0]["mqtt.publish_json"]
    return action
