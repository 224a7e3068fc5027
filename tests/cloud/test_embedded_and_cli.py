"""The embedded-PostgreSQL path (DATABASE_URL unset) and the ``smartfarm cloud`` CLI functions."""

from __future__ import annotations

import json
import logging

import psycopg
import pytest

from cloud.app import init_app
from cloud.cli import cloud_main
from cloud.db.migrate import load_migrations
from tests.cloud.conftest import IsolatedSettings, make_settings
from tests.conftest import embedded_dir

pytestmark = pytest.mark.postgres


async def test_serves_from_embedded_postgres_when_database_url_is_unset(  # type: ignore[no-untyped-def]
    aiohttp_client, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    with embedded_dir() as data_dir:
        settings = make_settings("unused", data_dir, migrate_on_start=True)
        settings = IsolatedSettings(**{**settings.model_dump(), "database_url": None})
        client = await aiohttp_client(init_app(settings))
        resp = await client.get("/health")
        assert resp.status == 200 and (await resp.json())["database"] == "ok"
        assert "embedded PostgreSQL running" in caplog.text
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
        resp = await client.post("/api/auth/login", json={"email": "a@b.co", "password": "x"})
        assert resp.status == 401  # schema migrated: the users table answers
        await client.close()  # stop the server before its folder goes


def _run(argv: list[str], monkeypatch, dsn: str, tmp_path) -> int:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("SMARTFARM_CLOUD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SMARTFARM_CLOUD_AUTH__ARGON2_MEMORY_KIB", "64")
    monkeypatch.setenv("SMARTFARM_CLOUD_AUTH__ARGON2_TIME_COST", "1")
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        return cloud_main(argv)
    finally:
        # cloud_main configures logging onto the captured stdout; put pytest's back.
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)


def test_check_config_masks_secrets(monkeypatch, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SMARTFARM_CLOUD_AUTH__JWT_SECRET", "super-secret-value-" * 3)
    assert _run(["check-config", "--print"], monkeypatch, "postgresql://u:hunter2@db/x",
                tmp_path) == 0
    out = capsys.readouterr().out
    config = json.loads(out)
    assert "hunter2" not in out and "super-secret-value" not in out
    assert config["database_url"] == "postgresql://u:**********@db/x"
    assert config["auth"]["jwt_secret"] == "**********"


def test_bad_config_fails_with_one_line_naming_the_key(monkeypatch, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SMARTFARM_CLOUD_PORT", "not-a-port")
    assert _run(["check-config"], monkeypatch, "postgresql://x@y/z", tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "port" in err and len(err.splitlines()) == 1


def test_migrate_seed_and_create_user(monkeypatch, tmp_path, capsys, databases) -> None:  # type: ignore[no-untyped-def]
    dsn = databases.dsn(databases.create())
    assert _run(["migrate"], monkeypatch, dsn, tmp_path) == 0
    assert "0001_core" in capsys.readouterr().out
    assert _run(["migrate"], monkeypatch, dsn, tmp_path) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _run(["seed-db", "--days", "1"], monkeypatch, dsn, tmp_path) == 0
    captured = capsys.readouterr()
    assert "telemetry [" in captured.err  # the progress bar
    with psycopg.connect(dsn) as conn:
        first = conn.execute("SELECT count(*) FROM sensor_data").fetchone()
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM rooms), (SELECT count(*) FROM devices),"
            " (SELECT count(*) FROM automation_rules)"
        ).fetchone()
    assert counts == (2, 10, 6)
    assert first is not None and first[0] >= 2 * 6 * 1400
    # Idempotent: a second run adds no rooms, devices or rules, only readings since the first.
    assert _run(["seed-db", "--days", "1"], monkeypatch, dsn, tmp_path) == 0
    with psycopg.connect(dsn) as conn:
        second = conn.execute("SELECT count(*) FROM sensor_data").fetchone()
        devices = conn.execute("SELECT count(*) FROM devices").fetchone()
    assert devices == (10,) and second is not None and second[0] - first[0] <= 2 * 6 * 2
    capsys.readouterr()
    argv = ["create-user", "admin@example.com", "--password", "long enough pw", "--admin"]
    assert _run(argv, monkeypatch, dsn, tmp_path) == 0
    assert "admin" in capsys.readouterr().out
    assert (
        _run(["create-user", "a@example.com", "--password", "short"], monkeypatch, dsn, tmp_path)
        == 2
    )
    assert _run(["migrate", "--down", "1"], monkeypatch, dsn, tmp_path) == 0
    last = load_migrations()[-1]
    assert f"{last.version:04d}_{last.name}" in capsys.readouterr().out


def test_json_logs_to_stdout_and_a_rotating_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import logging.handlers

    from cloud.logs import FILE_BYTES, FILE_COUNT, configure_logging

    settings = make_settings("unused", tmp_path, log_format="json", log_file=tmp_path / "c.log")
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        configure_logging(settings)
        log = logging.getLogger("cloud.test")
        log.info("edge %s connected", "e1", extra={"edge_id": "e1"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        rotating = [
            h for h in logging.root.handlers if isinstance(h, logging.handlers.RotatingFileHandler)
        ]
        assert [(h.maxBytes, h.backupCount) for h in rotating] == [(FILE_BYTES, FILE_COUNT)]
        assert FILE_BYTES == 10 * 2**20 and FILE_COUNT == 10
        for handler in logging.root.handlers:
            handler.flush()
    finally:
        for handler in logging.root.handlers:
            if handler not in handlers:
                handler.close()
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["message"] == "edge e1 connected" and lines[0]["edge_id"] == "e1"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "cloud.test"
    assert lines[0]["time"].endswith("+00:00")
    assert "ValueError: boom" in lines[1]["exception"]
    in_file = [json.loads(x) for x in (tmp_path / "c.log").read_text().splitlines()]
    assert [x["message"] for x in in_file] == ["edge e1 connected", "failed"]


def test_text_logs_by_default(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from cloud.logs import configure_logging

    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        configure_logging(make_settings("unused", tmp_path))
        logging.getLogger("cloud.test").warning("plain %d", 1)
    finally:
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    out = capsys.readouterr().out
    assert "WARNING cloud.test: plain 1" in out
