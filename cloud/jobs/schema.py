"""procrastinate's schema belongs to our migrations (0007 vendors it), so every database the
migrator builds — production, the embedded server, the tests' template — has the job tables.

When procrastinate is upgraded and ships schema migrations newer than the ones our files say they
include (a ``-- procrastinate-migrations-through: NAME`` line), copy each new file from
``procrastinate/sql/migrations/`` into a new migration of ours with that line updated.
``missing_upstream_migrations()`` lists what is missing; workers log it at start and
tests/cloud/test_jobs.py fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path

from procrastinate.schema import SchemaManager

from cloud.db.migrate import MIGRATIONS_DIR

_THROUGH = re.compile(r"^-- procrastinate-migrations-through: (\S+)$", re.MULTILINE)


def vendored_through(folder: Path = MIGRATIONS_DIR) -> str | None:
    """The newest procrastinate migration our migration files include."""
    names = [m for path in folder.glob("*.sql") for m in _THROUGH.findall(path.read_text())]
    return max(names) if names else None


def upstream_migrations() -> list[str]:
    folder = Path(SchemaManager.get_migrations_path())
    return sorted(p.stem for p in folder.glob("*.sql"))


def missing_upstream_migrations(folder: Path = MIGRATIONS_DIR) -> list[str]:
    through = vendored_through(folder) or ""
    return [name for name in upstream_migrations() if name > through]
