"""The caller's own account."""

from __future__ import annotations

from datetime import datetime

from cloud.api.routing import Call, Route
from cloud.api.schemas import Out
from cloud.db import users as users_db
from cloud.errors import Unauthorized


class UserOut(Out):
    id: int
    email: str
    display_name: str
    is_admin: bool
    created_at: datetime


async def me(call: Call) -> UserOut:
    """The authenticated user"""
    row = await users_db.by_id(call.db, call.user_id)
    if row is None:
        raise Unauthorized("account removed")
    return UserOut.model_validate(row)


ROUTES = [
    Route("GET", "/api/users/me", me, "user", response=UserOut, tag="users"),
]
