"""Fixtures for the operations tests: the cloud CLI run in-process against a test database."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.cli import cloud_main


@pytest.fixture
def cloud_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., int]]:
    """``cloud_cli(dsn, *argv)``: ``smartfarm cloud …`` on the database ``dsn`` (cheap argon2,
    a temp data dir); the root logging it configures is put back afterwards."""
    handlers, level = logging.root.handlers[:], logging.root.level
    monkeypatch.setenv("SMARTFARM_CLOUD_DATA_DIR", str(tmp_path / "cloud-data"))
    monkeypatch.setenv("SMARTFARM_CLOUD_AUTH__ARGON2_TIME_COST", "1")
    monkeypatch.setenv("SMARTFARM_CLOUD_AUTH__ARGON2_MEMORY_KIB", "64")
    monkeypatch.delenv("SMARTFARM_CLOUD_CONFIG", raising=False)

    def run(dsn: str, *argv: str) -> int:
        monkeypatch.setenv("DATABASE_URL", dsn)
        return cloud_main(list(argv))

    yield run
    for handler in logging.root.handlers:
        if handler not in handlers:
            handler.close()
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)
