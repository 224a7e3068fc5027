"""shared.config_problems: where TOML keys are, and validation errors in a grower's words."""
from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from shared.config_problems import Problem, problems_from_validation, report, toml_lines

DOC = """\
# a comment
farm_id = "f"

[broker]
port = 1884   # trailing comment
tls.enabled = true

[[rooms]]
id = "a"
notes = \"\"\"
several
lines\"\"\"

[[rooms.rules]]
id = "r1"

[[rooms]]
id = "b"

[[rooms.rules]]
id = "r2"

[[rooms.rules]]
id = "r3"
"""


def test_toml_lines_maps_keys_tables_and_arrays_of_tables() -> None:
    lines = toml_lines(DOC)
    assert lines[("farm_id",)] == 2
    assert lines[("broker",)] == 4
    assert lines[("broker", "port")] == 5
    assert lines[("broker", "tls", "enabled")] == 6
    assert lines[("rooms", 0)] == 8
    assert lines[("rooms", 0, "id")] == 9
    assert lines[("rooms", 0, "rules", 0, "id")] == 15
    assert lines[("rooms", 1, "id")] == 18
    assert lines[("rooms", 1, "rules", 0, "id")] == 21
    assert lines[("rooms", 1, "rules", 1, "id")] == 24
    assert ("several",) not in lines and ("lines",) not in lines


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    kind: Literal["a", "b"]
    every_s: float = Field(default=1, gt=0)


class Room(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    size: int = Field(ge=1)
    rules: list[Rule] = Field(default_factory=list)


class Broker(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int = Field(default=1884, ge=0, le=65535)
    password: SecretStr | None = None
    enabled: bool = False


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broker: Broker = Field(default_factory=Broker)
    rooms: list[Room] = Field(default_factory=list)


def _name(key: str, item: Any, root: Any) -> str | None:
    if key == "rooms" and isinstance(item, dict) and isinstance(item.get("id"), str):
        return f"room `{item['id']}`"
    if key == "rules" and isinstance(item, dict) and isinstance(item.get("id"), str):
        return f"rule `{item['id']}`"
    return None


def _problems(data: dict[str, Any], text: str | None = None,
              env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ValidationError) as raised:
        Settings.model_validate(data)
    return [str(p) for p in problems_from_validation(
        raised.value, model=Settings, data=data, env=env or {}, env_prefix="APP_", text=text,
        namer=_name)]


def test_each_error_names_the_item_the_value_and_what_is_allowed() -> None:
    data = {
        "broker": {"port": 70000, "pasword": "x", "enabled": "maybe"},
        "rooms": [
            {"id": "a", "size": 0, "rules": [{"id": "r1", "kind": "c", "every_s": "soon"}]},
            {"size": 2},
        ],
    }
    assert _problems(data) == [
        "broker.port 70000 must be ≤ 65535",
        "broker.enabled 'maybe' is not true or false",
        "`broker.pasword` is not a setting (did you mean `password`?)",
        "room `a`: size 0 must be ≥ 1",
        "room `a`, rule `r1`: kind 'c' is not one of a, b",
        "room `a`, rule `r1`: every_s 'soon' is not a number",
        "room #2: id is missing",
    ]


def test_sources_are_the_environment_variable_or_the_line() -> None:
    text = "[broker]\nport = -1\npassword = 5\n"
    data = {"broker": {"port": -1, "password": 5}}
    assert _problems(data, text) == [
        "broker.port -1 must be ≥ 0 (line 2)",
        "broker.password ******** must be text (in quotes) (line 3)",
    ]
    env = {"APP_BROKER__PORT": "-1", "APP_BROKER__PASSWORD": "5"}
    assert _problems(data, text, env) == [
        "broker.port -1 must be ≥ 0 (from APP_BROKER__PORT=-1)",
        "broker.password ******** must be text (in quotes)"
        " (from APP_BROKER__PASSWORD=********)",
    ]


def test_secrets_are_masked_but_not_paths_of_key_files() -> None:
    from shared.config_problems import is_secret

    for name in ("password", "admin_password", "SMARTFARM_EDGE_CLOUD__TOKEN", "jwt_secret",
                 "database_url", "DATABASE_URL", "api_key", "key"):
        assert is_secret(name), name
    for name in ("key_file", "admin_password_file", "token_file", "port", "keepalive_s",
                 "SMARTFARM_EDGE_BROKER__TLS__KEY_FILE"):
        assert not is_secret(name), name


def test_report_is_one_line_for_one_problem_and_a_list_for_more() -> None:
    one = [Problem("room `a`", "size 0 must be ≥ 1", "line 3")]
    assert report("site.toml", one) == "site.toml: room `a`: size 0 must be ≥ 1 (line 3)"
    two = [*one, Problem("", "broker.port 'x' is not a whole number")]
    assert report("site.toml", two).splitlines() == [
        "site.toml: 2 problems",
        "  - room `a`: size 0 must be ≥ 1 (line 3)",
        "  - broker.port 'x' is not a whole number",
    ]
