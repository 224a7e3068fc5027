"""`smartfarm edge backup` / `restore`: a consistent copy of a running edge's database (readings
arriving over MQTT and straight into the store while it is taken), restored into another data
dir and run again; restore refuses while the edge runs."""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.backup import BackupError, backup_database, run_lock
from edge.cli import edge_main
from edge.store import readings
from firmware_sim.farm import build_farm
from shared.models import Telemetry
from tests.e2e.conftest import fast_settings, make_site, query, wait_for

SENSOR = "room-a-sensor"


def _fill(conn: sqlite3.Connection, start: float, n: int) -> None:
    for i in range(n):
        tel = Telemetry(device_id=SENSOR, timestamp=datetime.fromtimestamp(start + i, UTC),
                        data={"temperature_c": 18 + i % 7 / 10, "humidity_pct": 88.5,
                              "co2_ppm": 800 + i % 50})
        readings.insert_reading(conn, tel, "room-a", start + i + 0.2)


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in query(db, sql)]


async def test_backup_of_a_running_edge_restores_into_a_new_data_dir(
        tmp_path, farm_id, edges, capsys) -> None:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    edge = await edges.start(settings)
    base = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    await edge.db.write(_fill, base, 20_000)

    # Readings keep arriving during the backup: simulated sensors over MQTT, plus a writer
    # straight into the store (so that every backup step has commits around it).
    farm = build_farm(settings, speed=60, telemetry_interval_s=0.3, seed=5)
    stop = asyncio.Event()
    sim = asyncio.create_task(farm.run(stop))
    await wait_for(lambda: query(settings.db_path, "SELECT count(*) FROM readings"
                                 " WHERE ts > ?", (base + 1e5,))[0][0] > 0, 30, "sim readings")

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            edge.db.write_nowait(_fill, base + 50_000 + i * 10, 10)
            i += 1
            await asyncio.sleep(0.01)

    extra = asyncio.create_task(writer())
    live_counts: list[int] = []

    def progress(done: int, total: int) -> None:
        live_counts.append(query(settings.db_path, "SELECT count(*) FROM readings")[0][0])
        time.sleep(0.005)  # give the edge's group commits room between steps

    dest = tmp_path / "backups" / "edge.sqlite3"
    try:
        result = await asyncio.to_thread(backup_database, settings.db_path, dest,
                                         pages_per_step=32, progress=progress)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await extra
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sim, 10)

    # The store changed while the copy was being taken, and the copy is one snapshot of it.
    assert len(live_counts) > 10 and live_counts[-1] > live_counts[0]
    assert result.path == dest and result.schema_version >= 1
    copied = query(dest, "SELECT count(*), max(id) FROM readings")[0]
    assert copied[0] >= 20_000
    assert query(dest, "PRAGMA integrity_check")[0][0] == "ok"
    assert query(dest, "PRAGMA journal_mode")[0][0] == "delete"
    assert not dest.with_name(dest.name + "-wal").exists()
    last = copied[1]
    for sql in (f"SELECT * FROM readings WHERE id <= {last} ORDER BY id",
                "SELECT * FROM series ORDER BY key"):
        assert _rows(dest, sql) == _rows(settings.db_path, sql)
    assert query(settings.db_path, "SELECT count(*) FROM readings")[0][0] > copied[0]

    # Restore into another site's (new, empty) data dir and run an edge on it.
    other = fast_settings(make_site(tmp_path / "other", farm_id))
    assert not other.db_path.exists()
    assert edge_main(["restore", "--config", str(other.config_path), str(dest)]) == 0
    assert "restored" in capsys.readouterr().out
    assert not list(other.data_path.glob("*.before-restore*"))
    sql = "SELECT * FROM readings ORDER BY id"
    assert _rows(other.db_path, sql) == _rows(dest, sql)
    edge2 = await edges.start(other)
    assert await edge2.db.read(readings.count) == copied[0]


async def test_restore_refuses_while_the_edge_runs_and_keeps_the_replaced_db(
        tmp_path, farm_id, edges, capsys) -> None:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    cfg = str(settings.config_path)
    edge = await edges.start(settings)
    base = datetime.now(UTC).timestamp() - 3600
    await edge.db.write(_fill, base, 500)
    assert edge_main(["backup", "--config", cfg, "--gzip"]) == 0
    out = capsys.readouterr().out
    backup = Path(out.split("backup written: ")[1].split(" (")[0])
    assert backup.parent == settings.data_path / "backups" and backup.name.endswith(".gz")
    assert backup.name.startswith(f"edge-{farm_id}-")
    with gzip.open(backup) as fh:
        assert fh.read(16) == b"SQLite format 3\x00"
    assert backup.stat().st_mode & 0o077 == 0

    await edge.db.write(_fill, base + 10_000, 100)  # made after the backup

    # The running edge has the file open: refused, nothing touched.
    assert edge_main(["restore", "--config", cfg, str(backup)]) == 1
    assert "in use by another process" in capsys.readouterr().err
    assert not list(settings.data_path.glob("*.before-restore*"))
    # `edge run` holds the run lock: refused by pid before even looking at the file.
    with run_lock(settings.data_path):
        with pytest.raises(BackupError, match="another edge is running"):
            with run_lock(settings.data_path):
                pass
        assert edge_main(["restore", "--config", cfg, str(backup)]) == 1
        assert "the edge is running" in capsys.readouterr().err

    # Stopped: the restore goes through and the replaced database is kept beside it.
    await edges.stop(edge)
    assert edge_main(["restore", "--config", cfg, str(backup)]) == 0
    kept = settings.db_path.with_name("edge.db.before-restore")
    assert f"kept as {kept}" in capsys.readouterr().out
    assert query(kept, "SELECT count(*) FROM readings")[0][0] == 600
    assert query(settings.db_path, "SELECT count(*) FROM readings")[0][0] == 500
    assert query(kept, "PRAGMA integrity_check")[0][0] == "ok"
    # A second restore keeps the first kept file too.
    assert edge_main(["restore", "--config", cfg, str(backup)]) == 0
    assert len(list(settings.data_path.glob("edge.db.before-restore*"))) == 2
    capsys.readouterr()


def test_bad_backups_and_a_missing_database_give_clear_errors(tmp_path, farm_id, capsys) -> None:
    cfg = make_site(tmp_path / "site", farm_id)
    assert edge_main(["backup", "--config", str(cfg)]) == 1
    assert "no edge database at" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    assert edge_main(["restore", "--config", str(cfg), str(junk)]) == 1
    assert "not an SQLite database" in capsys.readouterr().err
    other = tmp_path / "other.sqlite3"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    assert edge_main(["restore", "--config", str(cfg), str(other)]) == 1
    assert "not a smartfarm edge database" in capsys.readouterr().err
    truncated = tmp_path / "cut.sqlite3.gz"
    truncated.write_bytes(gzip.compress(b"SQLite format 3\x00" + b"x" * 5000)[:60])
    assert edge_main(["restore", "--config", str(cfg), str(truncated)]) == 1
    assert "cannot read it" in capsys.readouterr().err
    assert edge_main(["restore", "--config", str(cfg), str(tmp_path / "nope")]) == 1
    assert "not found" in capsys.readouterr().err
    assert not list((tmp_path / "site").rglob("edge.db*"))
