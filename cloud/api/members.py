"""Farm members and roles; adding an unknown email creates an invited account (users invite).
Open invitations (members who have not set a password yet) are listed, renewed (a new one-time
token, the old one stops working) and revoked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import Field

from cloud import appkeys
from cloud.api.edges import cloud_url
from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import Email, In, Out, RoleName
from cloud.auth.tokens import opaque_token, token_hash
from cloud.db import audit
from cloud.db import farms as farms_db
from cloud.db import setup as setup_db
from cloud.db import users as users_db
from cloud.errors import Conflict, NotFound, ValidationFailed
from cloud.setup_mail import InviteEmailOut, send_invite
from shared.models import Id

INVITE_TTL = timedelta(days=7)
INVITE_PREFIX = "sfi_"


class MemberIn(In):
    email: Email
    role: RoleName
    room_ids: list[Id] | None = Field(
        default=None, max_length=500, description="limit to these rooms; null: every room"
    )


class MemberPatch(In):
    role: RoleName | None = None
    room_ids: list[Id] | None = Field(
        default=None, max_length=500, description="limit to these rooms; null: every room"
    )


class MemberOut(Out):
    user_id: int
    email: str
    display_name: str
    role: RoleName
    room_ids: list[str] | None = None
    activated: bool = Field(description="false until an invited user sets a password")
    created_at: datetime


class InvitedMemberOut(MemberOut):
    invite_token: str | None = Field(
        default=None,
        description="shown once when a new account was created: POST /api/auth/accept-invite",
    )
    invite_expires_at: datetime | None = None
    invite_url: str | None = Field(
        default=None, description="the page where the invitee chooses a password (shown once)"
    )
    invite_email: InviteEmailOut | None = Field(
        default=None, description="whether the link was emailed to the invitee"
    )


class InviteOut(Out):
    user_id: int
    email: str
    role: RoleName
    room_ids: list[str] | None = None
    created_at: datetime
    invite_expires_at: datetime | None = Field(description="null or past: the link expired")


class RenewedInviteOut(InviteOut):
    invite_token: str = Field(description="shown once: POST /api/auth/accept-invite")
    invite_url: str
    invite_email: InviteEmailOut


def invite_url(call: Call, token: str) -> str:
    return f"{cloud_url(call)}/#/invite/{token}"


async def _email_invite(call: Call, email: str, token: str, role: str) -> InviteEmailOut:
    farm = await farms_db.get(call.db, call.farm_id)
    assert call.user is not None
    return await send_invite(
        call.app[appkeys.SETTINGS].notify.smtp,
        email,
        link=invite_url(call, token),
        farm=str(farm["name"]) if farm else call.farm_id,
        inviter=call.user.email,
        role=role,
    )


def _user_id(call: Call) -> int:
    raw = call.param("user_id")
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound("member not found")
    return int(raw)


def _check_owner_rooms(role: str, room_ids: list[str] | None) -> None:
    if role == "owner" and room_ids is not None:
        raise ValidationFailed(
            [{"field": "body.room_ids", "message": "owners see every room", "type": "value_error"}]
        )


async def list_members(call: Call) -> Page[MemberOut]:
    """List a farm's members with their roles and room grants"""
    q: PageQuery = call.query
    after = decode_cursor(q.cursor, int)
    rows = await farms_db.list_members(
        call.db, call.farm_id, after=after[0] if after else None, limit=q.limit + 1
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["user_id"]])
    return Page[MemberOut](items=[MemberOut.model_validate(r) for r in rows], next_cursor=cursor)


async def add_member(call: Call) -> InvitedMemberOut:
    """Add a member by email, inviting them when they have no account yet
    A new account gets a one-time invitation token (valid 7 days), returned only here."""
    body: MemberIn = call.body
    _check_owner_rooms(body.role, body.room_ids)
    invite: str | None = None
    expires: datetime | None = None
    user = await users_db.by_email(call.db, body.email)
    if user is None:
        user = await users_db.create(call.db, email=body.email, password_hash=None)
    if not user["activated"]:
        invite = opaque_token(INVITE_PREFIX)
        expires = datetime.now(UTC) + INVITE_TTL
        await users_db.set_invite(call.db, user["id"], token_hash(invite), expires)
    await farms_db.set_member(
        call.db,
        call.farm_id,
        user["id"],
        role=body.role,
        room_ids=body.room_ids,
        create_only=True,
    )
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="member.add",
        target=str(user["id"]),
        detail={"role": body.role, "room_ids": body.room_ids},
    )
    row = await farms_db.get_member(call.db, call.farm_id, user["id"])
    assert row is not None
    extra: dict[str, object] = {"invite_token": invite, "invite_expires_at": expires}
    if invite is not None:
        extra["invite_url"] = invite_url(call, invite)
        extra["invite_email"] = await _email_invite(call, body.email, invite, body.role)
    return InvitedMemberOut.model_validate({**row, **extra})


async def get_member(call: Call) -> MemberOut:
    """Read one member"""
    row = await farms_db.get_member(call.db, call.farm_id, _user_id(call))
    if row is None:
        raise NotFound("member not found")
    return MemberOut.model_validate(row)


async def update_member(call: Call) -> MemberOut:
    """Change a member's role or room grants (a farm always keeps one owner)"""
    body: MemberPatch = call.body
    user_id = _user_id(call)
    current = await farms_db.get_member(call.db, call.farm_id, user_id)
    if current is None:
        raise NotFound("member not found")
    role = body.role or current["role"]
    room_ids = body.room_ids if "room_ids" in body.model_fields_set else current["room_ids"]
    if role == "owner":
        room_ids = None if "room_ids" not in body.model_fields_set else room_ids
    _check_owner_rooms(role, room_ids)
    await farms_db.set_member(call.db, call.farm_id, user_id, role=role, room_ids=room_ids)
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="member.update",
        target=str(user_id),
        detail={"role": role, "room_ids": room_ids},
    )
    row = await farms_db.get_member(call.db, call.farm_id, user_id)
    assert row is not None
    return MemberOut.model_validate(row)


async def remove_member(call: Call) -> None:
    """Remove a member from the farm (a farm always keeps one owner)"""
    user_id = _user_id(call)
    if not await farms_db.remove_member(call.db, call.farm_id, user_id):
        raise NotFound("member not found")
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="member.remove",
        target=str(user_id),
    )


async def list_invites(call: Call) -> list[InviteOut]:
    """List the farm's open invitations (members who have not set a password yet)"""
    rows = await setup_db.list_invites(call.db, call.farm_id)
    return [InviteOut.model_validate(r) for r in rows]


async def _pending(call: Call) -> tuple[int, dict[str, object]]:
    user_id = _user_id(call)
    account = await setup_db.member_account(call.db, call.farm_id, user_id)
    if account is None:
        raise NotFound("invitation not found")
    if account["activated"]:
        raise Conflict("this member already accepted the invitation")
    return user_id, account


async def renew_invite(call: Call) -> RenewedInviteOut:
    """Issue a new invitation token (valid 7 days); the previous one stops working"""
    user_id, _ = await _pending(call)
    invite = opaque_token(INVITE_PREFIX)
    expires = datetime.now(UTC) + INVITE_TTL
    await users_db.set_invite(call.db, user_id, token_hash(invite), expires)
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="member.invite_renew",
        target=str(user_id),
    )
    row = next(
        r for r in await setup_db.list_invites(call.db, call.farm_id) if r["user_id"] == user_id
    )
    mail = await _email_invite(call, row["email"], invite, row["role"])
    return RenewedInviteOut.model_validate(
        {
            **row,
            "invite_token": invite,
            "invite_url": invite_url(call, invite),
            "invite_email": mail,
        }
    )


async def revoke_invite(call: Call) -> None:
    """Withdraw an invitation: the member leaves the farm and the link stops working"""
    user_id, _ = await _pending(call)
    await farms_db.remove_member(call.db, call.farm_id, user_id)
    await setup_db.forget_invite(call.db, user_id)
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="member.invite_revoke",
        target=str(user_id),
    )


_INVITES = "/api/farms/{farm_id}/invites"
_BASE = "/api/farms/{farm_id}/members"
ROUTES = [
    Route(
        "GET",
        _BASE,
        list_members,
        "farm",
        role="owner",
        query=PageQuery,
        response=Page[MemberOut],
        tag="members",
    ),
    Route(
        "POST",
        _BASE,
        add_member,
        "farm",
        role="owner",
        body=MemberIn,
        response=InvitedMemberOut,
        status=201,
        tag="members",
        errors=(409, 422),
    ),
    Route(
        "GET",
        _BASE + "/{user_id}",
        get_member,
        "farm",
        role="owner",
        response=MemberOut,
        tag="members",
    ),
    Route(
        "PATCH",
        _BASE + "/{user_id}",
        update_member,
        "farm",
        role="owner",
        body=MemberPatch,
        response=MemberOut,
        tag="members",
        errors=(409, 422),
    ),
    Route(
        "DELETE",
        _BASE + "/{user_id}",
        remove_member,
        "farm",
        role="owner",
        status=204,
        tag="members",
        errors=(409,),
    ),
    Route(
        "GET",
        _INVITES,
        list_invites,
        "farm",
        role="owner",
        response=list[InviteOut],
        tag="members",
    ),
    Route(
        "POST",
        _INVITES + "/{user_id}/renew",
        renew_invite,
        "farm",
        role="owner",
        response=RenewedInviteOut,
        tag="members",
        errors=(409,),
    ),
    Route(
        "DELETE",
        _INVITES + "/{user_id}",
        revoke_invite,
        "farm",
        role="owner",
        status=204,
        tag="members",
        errors=(409,),
    ),
]
