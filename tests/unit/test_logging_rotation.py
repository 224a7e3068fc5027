"""Log files rotate at the configured size with the configured number kept, and the configured
level filters, for the cloud (cloud/logs.py) and the edge (edge/logs.py)."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.config import CloudSettings
from cloud.config import ConfigError as CloudConfigError
from cloud.logs import configure_logging
from edge.config import ConfigError, load_config
from edge.logs import configure_edge_logging

LINE = "x" * 90


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    for handler in logging.root.handlers:
        if handler not in handlers:
            handler.close()
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def _flush() -> None:
    for handler in logging.root.handlers:
        handler.flush()


def _files(log: Path) -> list[Path]:
    return sorted(log.parent.glob(log.name + "*"))


def test_cloud_log_file_rotates_at_the_configured_size(tmp_path, monkeypatch) -> None:
    for key in ("LOG_LEVEL", "LOG_FILE", "LOG_MAX_BYTES", "LOG_BACKUPS", "LOG_FORMAT"):
        monkeypatch.delenv(f"SMARTFARM_CLOUD_{key}", raising=False)
    log = tmp_path / "logs" / "cloud.log"
    settings = CloudSettings(log_file=log, log_max_bytes=4096, log_backups=3,
                             log_level="WARNING")
    configure_logging(settings)
    logger = logging.getLogger("cloud.test.rotation")
    for i in range(300):
        logger.warning("w%04d %s", i, LINE)
        logger.info("info %d never written", i)
    _flush()
    assert [p.name for p in _files(log)] == [
        "cloud.log", "cloud.log.1", "cloud.log.2", "cloud.log.3"]
    for path in _files(log):
        assert 0 < path.stat().st_size <= 4096
        assert "never written" not in path.read_text()
    # The newest records are in the current file, the oldest ones rotated away.
    assert "w0299" in log.read_text() and "w0298" in log.read_text()
    assert not any("w0000 " in p.read_text() for p in _files(log))


def test_cloud_defaults_are_10_mb_times_10_and_bad_values_are_refused(monkeypatch) -> None:
    monkeypatch.delenv("SMARTFARM_CLOUD_LOG_MAX_BYTES", raising=False)
    monkeypatch.delenv("SMARTFARM_CLOUD_LOG_BACKUPS", raising=False)
    settings = CloudSettings()
    assert (settings.log_max_bytes, settings.log_backups) == (10 * 2**20, 10)
    monkeypatch.setenv("SMARTFARM_CLOUD_LOG_MAX_BYTES", "5000000")
    monkeypatch.setenv("SMARTFARM_CLOUD_LOG_BACKUPS", "4")
    assert (CloudSettings().log_max_bytes, CloudSettings().log_backups) == (5_000_000, 4)
    from cloud.config import load_settings

    monkeypatch.setenv("SMARTFARM_CLOUD_LOG_BACKUPS", "0")
    with pytest.raises(CloudConfigError, match="log_backups"):
        load_settings()


def test_edge_log_keys_from_toml_and_environment(tmp_path, monkeypatch) -> None:
    for key in ("LEVEL", "FILE", "MAX_BYTES", "BACKUPS"):
        monkeypatch.delenv(f"SMARTFARM_EDGE_LOG_{key}", raising=False)
    config = tmp_path / "site" / "edge.toml"
    config.parent.mkdir()
    config.write_text('farm_id = "f1"\nlog_level = "INFO"\nlog_file = "logs/edge.log"\n'
                      "log_max_bytes = 100000\nlog_backups = 7\n")
    settings = load_config(config)
    assert settings.log_file == Path("logs/edge.log")
    assert (settings.log_max_bytes, settings.log_backups) == (100_000, 7)

    # The environment wins over the file.
    monkeypatch.setenv("SMARTFARM_EDGE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("SMARTFARM_EDGE_LOG_MAX_BYTES", "2048")
    monkeypatch.setenv("SMARTFARM_EDGE_LOG_BACKUPS", "2")
    settings = load_config(config)
    configure_edge_logging(settings)
    log = config.parent / "logs" / "edge.log"  # relative to the config file
    logger = logging.getLogger("edge.test.rotation")
    for i in range(100):
        logger.debug("d%04d %s", i, LINE)
    _flush()
    assert [p.name for p in _files(log)] == ["edge.log", "edge.log.1", "edge.log.2"]
    assert all(p.stat().st_size <= 2048 for p in _files(log))
    assert "d0099" in log.read_text()

    monkeypatch.setenv("SMARTFARM_EDGE_LOG_LEVEL", "ERROR")
    configure_edge_logging(load_config(config))
    logger.warning("a warning, below ERROR")
    logger.error("an error")
    _flush()
    text = log.read_text()
    assert "an error" in text and "below ERROR" not in text

    monkeypatch.setenv("SMARTFARM_EDGE_LOG_MAX_BYTES", "10")
    with pytest.raises(ConfigError, match="log_max_bytes"):
        load_config(config)


def test_edge_without_log_file_logs_to_stderr_only(tmp_path, capsys) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('farm_id = "f1"\nlog_level = "WARNING"\n')
    configure_edge_logging(load_config(config))
    assert [type(h) for h in logging.root.handlers] == [logging.StreamHandler]
    logging.getLogger("edge.test").info("quiet")
    logging.getLogger("edge.test").warning("loud %d", 1)
    err = capsys.readouterr().err
    assert "loud 1" in err and "quiet" not in err
