"""The audit trail: who changed what, appended by handlers after each mutation."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Database

INSERT = """
INSERT INTO audit_log (user_id, farm_id, action, target, detail)
VALUES (%(user_id)s, %(farm_id)s, %(action)s, %(target)s, %(detail)s)"""


async def record(
    db: Database,
    *,
    user_id: int | None,
    farm_id: str | None,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    await db.execute(
        INSERT,
        {
            "user_id": user_id,
            "farm_id": farm_id,
            "action": action,
            "target": target,
            "detail": Jsonb(detail or {}),
        },
    )

