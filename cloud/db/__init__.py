"""PostgreSQL access: the pool gateway, migrations, and one repository module per resource."""

from __future__ import annotations

from cloud.db.database import Database

__all__ = ["Database"]
