"""`smartfarm cloud backup` / `restore` round trip on real PostgreSQL: a migrated, seeded
database is dumped with pg_dump -Fc and restored into another fresh database, table by table."""
from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cloud.backup import BackupError, find_tool, server_major
from cloud.db.migrate import migrate

pytestmark = pytest.mark.postgres


def table_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return {name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(name))).fetchone()[0] for name in names}


def readings_digest(dsn: str) -> tuple[object, ...]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*), sum(value), min(time), max(time),"
                            " count(DISTINCT device_id) FROM sensor_data").fetchone()


@pytest.fixture
def tools(pg_admin_dsn: str) -> None:
    """Skip, saying why, when no pg_dump / pg_restore here can handle this server."""
    major = server_major(pg_admin_dsn)
    try:
        find_tool("pg_dump", major)
        find_tool("pg_restore", major)
    except BackupError as exc:
        pytest.skip(f"no usable client tools: {exc}")


def test_backup_restores_into_another_database_table_for_table(
        databases, tools, cloud_cli, tmp_path, capsys) -> None:
    source = databases.dsn(databases.create())
    asyncio.run(migrate(source))
    assert cloud_cli(source, "seed-db", "--days", "1") == 0
    assert cloud_cli(source, "create-user", "ops@farm.example", "--password", "0123456789") == 0
    capsys.readouterr()

    assert cloud_cli(source, "backup", "--out", f"{tmp_path}/backups/") == 0
    out = capsys.readouterr().out
    dump = Path(out.split("backup written: ")[1].split(" (")[0])
    assert dump.parent == tmp_path / "backups" and dump.name.startswith("smartfarm-cloud-")
    assert dump.read_bytes()[:5] == b"PGDMP"  # custom format
    assert dump.stat().st_mode & 0o077 == 0
    assert not list(dump.parent.glob(".*partial"))

    target = databases.dsn(databases.create())
    assert cloud_cli(target, "restore", str(dump)) == 0
    assert "restored" in capsys.readouterr().out
    counts = table_counts(source)
    assert counts["sensor_data"] > 10_000 and counts["users"] == 2 and counts["farms"] == 1
    assert counts["rooms"] >= 2 and counts["devices"] > 0
    assert table_counts(target) == counts
    assert readings_digest(target) == readings_digest(source)
    # The restored database is at this code's schema: nothing left to migrate.
    assert asyncio.run(migrate(target)) == []

    # Not into a database that has tables, unless asked to replace them.
    assert cloud_cli(target, "restore", str(dump)) == 1
    assert "pass --clean" in capsys.readouterr().err
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DELETE FROM sensor_data WHERE metric = 'co2_ppm'")
    assert cloud_cli(target, "restore", "--clean", str(dump)) == 0
    assert table_counts(target) == counts
    assert readings_digest(target) == readings_digest(source)


def test_clear_errors_for_bad_files_tools_and_servers(
        databases, tools, cloud_cli, tmp_path, capsys) -> None:
    target = databases.dsn(databases.create())
    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"this is not a pg_dump archive\n" * 10)
    assert cloud_cli(target, "restore", str(junk)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: pg_restore") and "Traceback" not in err
    assert cloud_cli(target, "restore", str(tmp_path / "missing.dump")) == 1
    assert "not found" in capsys.readouterr().err

    # A client too old for the server is never picked; none at all gives a clear message.
    old = tmp_path / "bin" / "pg_dump"
    old.parent.mkdir()
    old.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    old.chmod(0o755)
    major = server_major(target)
    assert find_tool("pg_dump", major, [old.parent]).path != old
    with pytest.raises(BackupError, match=r"pg_dump for PostgreSQL 99 not found .*"
                       r"bin/pg_dump \(9\).*install postgresql-client-99 or pass --bin-dir"):
        find_tool("pg_dump", 99, [old.parent])

    closed = f"postgresql://postgres@127.0.0.1:{free_port_now()}/nowhere"
    assert cloud_cli(closed, "backup", "--out", str(tmp_path / "x.dump")) == 1
    assert "cannot connect to" in capsys.readouterr().err
    assert not (tmp_path / "x.dump").exists()


def free_port_now() -> int:
    from tests.conftest import free_port

    return free_port()
