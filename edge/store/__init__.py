"""The edge's SQLite store: the Database (one writer with group commit, readers) and its tables.

Repository modules (``readings``, ``quarantine``, ``devices``…) are functions taking a
``sqlite3.Connection``; run them through ``Database.write`` / ``write_nowait`` / ``read``.
"""

from __future__ import annotations

from edge.store.db import Database, DatabaseStats, Migration, StoreError, load_migrations, migrate

__all__ = ["Database", "DatabaseStats", "Migration", "StoreError", "load_migrations", "migrate"]
