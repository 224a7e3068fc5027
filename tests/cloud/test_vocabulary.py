"""shared.vocabulary is the one spelling: the migrated database's CHECK constraints list exactly
shared's species, stages and actuator roles, and the dashboard reads its words from the API."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from shared.vocabulary import (
    ACTUATOR_ROLES,
    METRIC_NAMES,
    SPECIES,
    STAGES,
    vocabulary_document,
)

pytestmark = pytest.mark.postgres

# column name → the list a CHECK on it must allow, exactly.
VOCABULARY_COLUMNS: dict[str, tuple[str, ...]] = {
    "species": SPECIES,
    "stage": STAGES,
    "actuator": ACTUATOR_ROLES,
    "actuator_role": ACTUATOR_ROLES,
    "metric": METRIC_NAMES,
}
# The constraints that exist today; the test cannot pass by finding none.
REQUIRED = {("rooms", "species"), ("rooms", "stage"), ("devices", "actuator")}
STATIC = Path(__file__).resolve().parents[2] / "cloud" / "static"

CHECKS = """
SELECT c.conrelid::regclass::text AS tbl, a.attname AS col, pg_get_constraintdef(c.oid) AS def
FROM pg_constraint c
JOIN pg_namespace n ON n.oid = c.connamespace
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.contype = 'c' AND n.nspname = 'public' AND a.attname = ANY (%(cols)s)"""


def test_database_checks_list_exactly_shareds_vocabulary(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(CHECKS, {"cols": list(VOCABULARY_COLUMNS)}).fetchall()
    seen = set()
    for table, column, definition in rows:
        # e.g. CHECK ((species = ANY (ARRAY['oyster'::text, 'shiitake'::text, ...])))
        if f"{column} = ANY" not in definition and f"{column} IN" not in definition:
            continue
        allowed = tuple(re.findall(r"'([^']*)'::text", definition))
        assert sorted(allowed) == sorted(VOCABULARY_COLUMNS[column]), (table, column, definition)
        assert len(set(allowed)) == len(allowed), definition
        seen.add((table.split(".")[-1], column))
    assert seen >= REQUIRED, f"constraints found: {sorted(seen)}"


async def test_vocabulary_endpoint_serves_shared(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.get("/api/vocabulary")
    assert resp.status == 401
    resp = await world_client.get("/api/vocabulary", headers=auth("viewer"))
    assert resp.status == 200
    assert await resp.json() == vocabulary_document()
    spec = await (await world_client.get("/apispec.json")).json()
    assert "/api/vocabulary" in spec["paths"]


def test_dashboard_spells_no_vocabulary() -> None:
    words = [*SPECIES, *STAGES, *ACTUATOR_ROLES, *METRIC_NAMES]
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        # The rule editor's defaults for a new rule name a metric: data, not a definition.
        if script.name == "view-rules.js":
            text = re.sub(r"const NEW_RULE = \{.*?\n\};", "", text, flags=re.S)
        spelled = [w for w in words if re.search(rf"['\"`]{w}['\"`]|\b{w}:", text)]
        assert not spelled, f"{script.name} spells {spelled}; read them from /api/vocabulary"
