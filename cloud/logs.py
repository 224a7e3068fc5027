"""Logging for the cloud's entry points: stdout, as text or one JSON object per line, plus an
optional rotating file (by default 10 MB × 10 files, as the original design; ``log_max_bytes``
and ``log_backups`` change it)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from typing import Any

from cloud.config import CloudSettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_BYTES = 10 * 2**20  # the defaults of log_max_bytes and log_backups
FILE_COUNT = 10
# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", …}`` per record: ``extra=`` fields are kept, an
    exception becomes one ``exception`` string, so a log shipper needs no multi-line parsing."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(settings: CloudSettings) -> None:
    """Root logging as configured: ``log_level``, ``log_format`` (text|json), ``log_file``
    rotated at ``log_max_bytes`` with ``log_backups`` older files kept."""
    formatter: logging.Formatter = (
        JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if settings.log_file is not None:
        path = settings.resolve(settings.log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                path,
                maxBytes=settings.log_max_bytes,
                backupCount=settings.log_backups,
                encoding="utf-8",
            )
        )
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=settings.log_level, handlers=handlers, force=True)
