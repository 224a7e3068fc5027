"""The edge schema's migrations: schema.sql split into numbered steps, applied in order.

``PRAGMA user_version`` records the last one applied; each runs in its own transaction together
with the version bump, so a crash leaves it undone rather than half done.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from typing import Final

from shared.errors import SmartfarmError
from shared.sync import KIND_CODES

log = logging.getLogger(__name__)

_MIGRATION_RE: Final = re.compile(r"^-- migration (\d+): (.+)$", re.MULTILINE)
_KIND_RE: Final = re.compile(r"\{kind:([a-z_]+)\}")


class StoreError(SmartfarmError):
    """The edge store cannot do what was asked (closed, newer schema, broken migration)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    title: str
    sql: str



def render_kinds(text: str) -> str:
    """Put each outbox kind's code (``shared.sync.KIND_CODES``) where schema.sql's triggers say
    ``{kind:NAME}``: the codes are defined once, in shared, for the edge that writes them and
    the cloud that reads them."""

    def code(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in KIND_CODES:
            raise StoreError(f"schema.sql: unknown outbox kind {name!r} in {match.group(0)}")
        return str(KIND_CODES[name])

    return _KIND_RE.sub(code, text)


def load_migrations(text: str | None = None) -> list[Migration]:
    """Split schema.sql into its ordered migrations; raise StoreError if numbering is off."""
    if text is None:
        text = resources.files("edge.store").joinpath("schema.sql").read_text(encoding="utf-8")
    text = render_kinds(text)
    marks = list(_MIGRATION_RE.finditer(text))
    out: list[Migration] = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        version = int(mark.group(1))
        if version != i + 1:
            raise StoreError(f"schema.sql: migration {version} found where {i + 1} was expected")
        out.append(Migration(version, mark.group(2).strip(), text[mark.end() : end].strip()))
    if not out:
        raise StoreError("schema.sql has no `-- migration N: title` sections")
    return out


def migrate(conn: sqlite3.Connection, migrations: list[Migration]) -> int:
    """Apply the migrations newer than the file's user_version; return the resulting version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = migrations[-1].version
    if current > latest:
        raise StoreError(
            f"database schema version {current} is newer than this code's {latest}:"
            " upgrade smartfarm"
        )
    for mig in migrations[current:]:
        log.info("applying store migration %d: %s", mig.version, mig.title)
        # One transaction per migration, the version bump included: a crash leaves it undone.
        # The version is an int from our own file, not user input.
        script = f"BEGIN IMMEDIATE;\n{mig.sql}\n;PRAGMA user_version = {mig.version:d};\nCOMMIT;"
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"store migration {mig.version} ({mig.title}) failed: {exc}") from exc
    return latest
