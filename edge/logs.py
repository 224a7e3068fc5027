"""Logging for the edge's entry points: stderr, plus an optional rotating file (the log_* keys of
the edge config)."""
from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from edge.config import EdgeSettings

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(
    level: str, *, log_file: Path | None = None, max_bytes: int = 10 * 2**20, backups: int = 10
) -> None:
    """Root logging: stderr, plus ``log_file`` rotated at ``max_bytes`` with ``backups`` kept."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=handlers, force=True)


def configure_edge_logging(settings: EdgeSettings) -> None:
    """``configure_logging`` from the log_* keys of the edge config."""
    configure_logging(
        settings.log_level,
        log_file=None if settings.log_file is None else settings.resolve(settings.log_file),
        max_bytes=settings.log_max_bytes, backups=settings.log_backups,
    )
