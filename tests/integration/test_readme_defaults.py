"""README's configuration tables cannot drift: every default they give is the setting's default
(what a key left out means) and, for the edge, what ``smartfarm edge init`` writes; every key
``init`` writes is in the table. README keeps its two commands at the top."""
from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from cloud.config import CloudSettings
from edge.config import EdgeSettings
from edge.site_init import init_site

README = Path(__file__).resolve().parents[2] / "README.md"
KEY = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
MISSING = object()


def _tables(section: str) -> Iterator[tuple[str, str]]:
    """(keys cell, default cell) of each `| key | default | meaning |` row under ``section``."""
    text = README.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    body = text[start:end if end != -1 else len(text)]
    in_table = False
    for line in body.splitlines():
        if line.startswith("| key | default | meaning |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            in_table = False
        if in_table and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            yield cells[0], cells[1]


def _rows(section: str) -> list[tuple[str, Any]]:
    """(dotted key, README default) pairs; a row whose keys and defaults do not pair up fails."""
    pairs: list[tuple[str, Any]] = []
    for keys_cell, default_cell in _tables(section):
        keys = re.findall(r"`([^`]*)`", keys_cell)
        if not keys or not all(KEY.match(k) for k in keys):
            continue  # `[[rooms]]`, `notify.*`: described, no single default
        cell = re.sub(r"\([^)]*\)", "", default_cell)
        values = [m.group(1) if m.group(1) is not None else None
                  for m in re.finditer(r"`([^`]*)`|\bunset\b", cell)]
        assert len(values) == len(keys), f"README row {keys_cell!r}: defaults {default_cell!r}"
        pairs += zip(keys, values, strict=True)
    return pairs


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(obj, BaseModel):
            obj = getattr(obj, part, MISSING)
        elif isinstance(obj, dict):
            obj = obj.get(part, MISSING)
        else:
            return MISSING
    return obj


def _same(readme: str | None, value: Any) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if readme is None:
        return value is None or value == []
    if isinstance(value, bool):
        return readme == ("true" if value else "false")
    if isinstance(value, int | float):
        return float(readme) == float(value)
    if isinstance(value, list):
        return bool(json.loads(readme) == value)
    return readme == str(value)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("SMARTFARM_EDGE_", "SMARTFARM_CLOUD_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif not isinstance(value, list):
            yield f"{prefix}{key}", value


def test_readme_keeps_its_two_commands_at_the_top() -> None:
    text = README.read_text()
    first_block = text.split("```")[1]
    assert first_block.splitlines()[1:3] == [
        "make demo   # set up .venv, then run PostgreSQL (embedded) + cloud + edge + a simulated"
        " farm",
        "make test   # set up .venv with the test extra, then ruff, mypy (strict) + the whole test"
        " suite",
    ]
    assert text.index("make demo") < text.index("## ")


def test_edge_defaults_match_the_settings_and_what_init_writes(
    tmp_path: Path, clean_env: None,
) -> None:
    rows = _rows("## The edge")
    assert len(rows) >= 35
    defaults = EdgeSettings()
    written = tomllib.loads(init_site(tmp_path / "site")[0].read_text())
    wrong = []
    for key, readme in rows:
        value = _get(defaults, key)
        assert value is not MISSING, f"README documents {key}, which is not a setting"
        if not _same(readme, value):
            wrong.append(f"{key}: README {readme!r}, setting default {value!r}")
        in_file = _get(written, key)
        if in_file is not MISSING and not _same(readme, in_file):
            wrong.append(f"{key}: README {readme!r}, `edge init` writes {in_file!r}")
    assert wrong == []
    documented = {key for key, _ in rows}
    undocumented = [key for key, _ in _flatten(written) if key not in documented]
    assert undocumented == [], "keys `edge init` writes that README's table lacks"


def test_cloud_defaults_match_the_settings(clean_env: None) -> None:
    rows = _rows("## The cloud") + _rows("## AWS")
    assert len(rows) >= 20
    defaults = CloudSettings()
    wrong = []
    for key, readme in rows:
        value = _get(defaults, key)
        assert value is not MISSING, f"README documents {key}, which is not a setting"
        if not _same(readme, value):
            wrong.append(f"{key}: README {readme!r}, setting default {value!r}")
    assert wrong == []
