"""Who may do what: farm roles, room grants, and the rule that strangers get 404, not 403."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cloud.errors import Forbidden, NotFound

Role = Literal["viewer", "operator", "owner"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "owner")
RANK: dict[str, int] = {role: i for i, role in enumerate(ROLES)}


@dataclass(frozen=True)
class User:
    id: int
    email: str
    is_admin: bool = False


@dataclass(frozen=True)
class Access:
    """A user's standing in one farm (and, for room-scoped routes, one room)."""

    farm_id: str
    role: Role
    room_id: str | None = None
    # None: every room of the farm; else only these (room-level grant).
    room_ids: frozenset[str] | None = None

    def may(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


def decide(
    *,
    what: str,
    farm_id: str | None,
    role: str | None,
    is_admin: bool,
    needed: Role,
    room_id: str | None = None,
    all_rooms: bool = True,
    granted_rooms: frozenset[str] = frozenset(),
) -> Access:
    """Turn a membership lookup into an Access or the right error.

    Not a member (or the resource does not exist): 404 with the same message either way, so a
    user cannot probe other farms' ids. A room outside an operator's grants: 404 too. A member
    whose role is too low: 403 (they already know the farm exists).
    """
    if farm_id is None:
        raise NotFound(f"{what} not found")
    if is_admin:
        return Access(farm_id=farm_id, role="owner", room_id=room_id)
    if role not in RANK:
        raise NotFound(f"{what} not found")
    rooms = None if all_rooms or role == "owner" else granted_rooms
    if room_id is not None and rooms is not None and room_id not in rooms:
        raise NotFound(f"{what} not found")
    access = Access(farm_id=farm_id, role=role, room_id=room_id, room_ids=rooms)  # type: ignore[arg-type]
    if not access.may(needed):
        raise Forbidden(f"needs the {needed} role in this farm")
    return access
