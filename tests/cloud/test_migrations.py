"""Migrations: up on an empty database, the resulting schema, down and up, concurrent runs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import psycopg
import pytest

from cloud.db.migrate import MIGRATIONS_DIR, Migration, MigrationError, load_migrations, migrate
from tests.conftest import Databases

pytestmark = pytest.mark.postgres

EXPECTED_TABLES = {
    "schema_migrations",
    "users",
    "farms",
    "farm_members",
    "member_room_grants",
    "rooms",
    "devices",
    "edges",
    "refresh_tokens",
    "audit_log",
    "sensor_data",
    "sensor_latest",
    "commands",
    "automation_rules",
    "recommendations",
    "notifications",
}

# Unqualified names only: tables in other schemas (telemetry.*, 0019) are not public tables.
_CREATE_RE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)\b(?!\.)", re.IGNORECASE)


@pytest.fixture
def empty_dsn(databases: Databases) -> Iterator[str]:
    name = databases.create()
    yield databases.dsn(name)
    databases.drop(name)


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def _indexes(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        return {r[0] for r in rows.fetchall()}


def _label(mig: Migration) -> str:
    return f"{mig.version:04d}_{mig.name}"


def _declared_tables() -> set[str]:
    """Every table some migration creates: the schema must hold these and nothing else."""
    names = {"schema_migrations"}
    for mig in load_migrations():
        names |= set(_CREATE_RE.findall(mig.up))
    return names


async def test_up_on_empty_database_creates_the_schema(empty_dsn: str) -> None:
    applied = await migrate(empty_dsn)
    assert applied == [_label(m) for m in load_migrations()]
    tables = _tables(empty_dsn)
    assert tables >= EXPECTED_TABLES
    assert tables == _declared_tables()
    with psycopg.connect(empty_dsn) as conn:
        cognito = conn.execute(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'users' AND column_name = 'cognito_sub'"
        ).fetchone()
    assert cognito is not None
    indexes = _indexes(empty_dsn)
    assert "sensor_data_time_brin" in indexes
    assert "sensor_data_room_metric_time_idx" in indexes
    with psycopg.connect(empty_dsn) as conn:
        access = conn.execute(
            "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
            "WHERE c.relname = 'sensor_data_time_brin'"
        ).fetchone()
    assert access == ("brin",)


async def test_running_twice_is_a_no_op(empty_dsn: str) -> None:
    await migrate(empty_dsn)
    assert await migrate(empty_dsn) == []


async def test_down_and_up_again(empty_dsn: str) -> None:
    migrations = load_migrations()
    await migrate(empty_dsn)
    full = _tables(empty_dsn)
    reverted = await migrate(empty_dsn, down=1)
    assert reverted == [_label(migrations[-1])]
    # Back to 0002: the operations tables go, the telemetry tables stay.
    later = [m for m in migrations if m.version > 2]
    reverted = await migrate(empty_dsn, down=len(later) - 1)
    assert reverted == [_label(m) for m in reversed(later[:-1])]
    assert "commands" not in _tables(empty_dsn)
    assert "sensor_data" in _tables(empty_dsn)
    await migrate(empty_dsn, down=100)  # more than exist: reverts what there is
    assert _tables(empty_dsn) == {"schema_migrations"}
    await migrate(empty_dsn)
    assert _tables(empty_dsn) == full


async def test_two_concurrent_runs_apply_each_migration_once(empty_dsn: str) -> None:
    first, second = await asyncio.gather(migrate(empty_dsn), migrate(empty_dsn))
    assert sorted(first + second) == sorted(f"{m.version:04d}_{m.name}" for m in load_migrations())
    with psycopg.connect(empty_dsn) as conn:
        count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert count == (len(load_migrations()),)


async def test_a_failing_migration_rolls_back_and_reports(empty_dsn: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE t_ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE t_bad (id int); SELECT nonsense();")
    with pytest.raises(MigrationError, match="0002_bad"):
        await migrate(empty_dsn, folder=tmp_path)
    tables = _tables(empty_dsn)
    assert "t_ok" in tables and "t_bad" not in tables  # 0002 rolled back as a whole


async def test_down_refuses_an_irreversible_migration(empty_dsn: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE t_one (id int);")
    await migrate(empty_dsn, folder=tmp_path)
    with pytest.raises(MigrationError, match="not reversible"):
        await migrate(empty_dsn, down=1, folder=tmp_path)
    assert "t_one" in _tables(empty_dsn)


async def test_per_farm_ids_convert_existing_rows_in_place(empty_dsn: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """0011 gives every existing row its room's farm; readings of long-deleted rooms go."""
    for path in MIGRATIONS_DIR.glob("00*.sql"):
        if int(path.name[:4]) < 11:
            (tmp_path / path.name).write_text(path.read_text())
    await migrate(empty_dsn, folder=tmp_path)
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("INSERT INTO farms (id, name) VALUES ('f1', 'one')")
        conn.execute("INSERT INTO rooms (id, farm_id, species, stage) "
                     "VALUES ('r1', 'f1', 'oyster', 'fruiting')")
        conn.execute("INSERT INTO devices (id, room_id, kind, actuator, credentials_hash) "
                     "VALUES ('d1', 'r1', 'actuator', 'humidifier', 'x')")
        conn.execute("INSERT INTO commands (id, room_id, device_id, action) "
                     "VALUES ('c1', 'r1', 'd1', 'on')")
        conn.execute("INSERT INTO automation_rules (room_id, id, body) VALUES ('r1', 'x', '{}')")
        conn.execute("INSERT INTO sensor_data (time, room_id, device_id, metric, value) "
                     "VALUES (now(), 'r1', 'd1', 'humidity_pct', 90), "
                     "(now(), 'gone', 'd9', 'humidity_pct', 50)")
    await migrate(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        for table in ("devices", "commands", "automation_rules", "sensor_hourly"):
            farms = conn.execute(f"SELECT DISTINCT farm_id FROM {table}").fetchall()
            assert farms == [("f1",)], table
        readings = conn.execute("SELECT farm_id, room_id FROM sensor_data").fetchall()
        assert readings == [("f1", "r1")]
        # The same ids in a second farm are now allowed.
        conn.execute("INSERT INTO farms (id, name) VALUES ('f2', 'two')")
        conn.execute("INSERT INTO rooms (id, farm_id, species, stage) "
                     "VALUES ('r1', 'f2', 'oyster', 'fruiting')")
        conn.execute("INSERT INTO devices (id, farm_id, room_id, kind, credentials_hash) "
                     "VALUES ('d1', 'f2', 'r1', 'sensor', 'x')")
