"""Edge gateways: register one per site, rotate its upload token (shown once); and, for an edge
holding a token, whom that token belongs to (checked by `smartfarm edge register`)."""

from __future__ import annotations

import secrets
import shlex
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field

from cloud import appkeys
from cloud.api.edge_sync import authenticate_edge
from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out
from cloud.auth.tokens import opaque_token, token_hash
from cloud.db import audit
from cloud.db import edges as edges_db
from cloud.errors import NotFound
from shared.models import Id
from shared.sync import PROTOCOL_VERSION

TOKEN_PREFIX = "sfe_"  # noqa: S105 - a prefix that makes leaked tokens easy to grep for


class EdgeIn(In):
    id: Id | None = Field(default=None, description="generated when omitted")
    name: str = Field(default="", max_length=100)


class EdgeOut(Out):
    id: str
    farm_id: str
    name: str
    high_water: int = Field(description="last outbox seq the cloud stored from this edge")
    last_seen: datetime | None
    rotated_at: datetime
    created_at: datetime
    online: bool = Field(default=False, description="heard from within the sync online window")
    rooms: list[str] = Field(default_factory=list, description="the rooms this edge serves")
    config_version: int = Field(default=0, description="the farm config version it applied")
    backlog: int | None = Field(
        default=None, description="outbox records not yet uploaded, as the edge last reported"
    )
    software_version: str | None = Field(default=None, description="as the edge reported it")
    status_at: datetime | None = Field(
        default=None, description="when the edge last reported backlog and version"
    )
    clock_offset_s: float | None = Field(
        default=None, description="cloud minus edge clock, seconds, measured on its last batch"
    )


class EdgeTokenOut(EdgeOut):
    token: str = Field(description="shown once; configure it on the edge (only a hash is kept)")
    cloud_url: str = Field(description="this cloud's address as the edge reaches it")
    init_command: str = Field(
        description="sets up a new edge (Raspberry Pi) for this farm: rooms and devices come"
        " from the cloud"
    )
    register_command: str = Field(description="points an edge already set up at this cloud")


class EdgeIdentityOut(Out):
    edge_id: str = Field(description="the edge this token belongs to")
    farm_id: str = Field(description="the farm that edge writes to")
    name: str
    protocol: int = Field(description="the sync protocol version this cloud speaks")


def new_token() -> str:
    return opaque_token(TOKEN_PREFIX)


def cloud_url(call: Call) -> str:
    """The address the caller reached this cloud at (behind a trusted proxy: the one it was
    asked for): the edge reaches the cloud the same way the browser does."""
    request = call.request
    scheme, host = request.scheme, request.host
    if call.app[appkeys.SETTINGS].trust_forwarded_for:
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    return f"{scheme}://{host}"


def _with_token(call: Call, row: dict[str, Any], token: str) -> EdgeTokenOut:
    url = cloud_url(call)
    common = f"--cloud {shlex.quote(url)} --token {shlex.quote(token)}"
    edge = f"--edge-id {shlex.quote(row['id'])}"
    return EdgeTokenOut.model_validate(
        {
            **_online(call, row),
            "token": token,
            "cloud_url": url,
            "init_command": f"smartfarm edge init /srv/smartfarm {common} {edge}",
            "register_command": f"smartfarm edge register {common} {edge} --config edge.toml",
        }
    )


def _online(call: Call, row: dict[str, Any]) -> dict[str, Any]:
    window = timedelta(seconds=call.app[appkeys.SETTINGS].sync.online_window_s)
    seen = row.get("last_seen")
    return {**row, "online": seen is not None and datetime.now(UTC) - seen <= window}


async def list_edges(call: Call) -> Page[EdgeOut]:
    """List a farm's edge gateways"""
    q: PageQuery = call.query
    after = decode_cursor(q.cursor, str)
    rows = await edges_db.list_edges(
        call.db, call.farm_id, after=after[0] if after else None, limit=q.limit + 1
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    items = [EdgeOut.model_validate(_online(call, r)) for r in rows]
    return Page[EdgeOut](items=items, next_cursor=cursor)


async def register_edge(call: Call) -> EdgeTokenOut:
    """Register an edge gateway; the answer carries its token, shown this once"""
    body: EdgeIn = call.body
    edge_id = body.id or f"edge-{secrets.token_hex(4)}"
    token = new_token()
    row = await edges_db.create(
        call.db, edge_id=edge_id, farm_id=call.farm_id, name=body.name, token_hash=token_hash(token)
    )
    await audit.record(
        call.db, user_id=call.user_id, farm_id=call.farm_id, action="edge.register", target=edge_id
    )
    return _with_token(call, row, token)


async def get_edge(call: Call) -> EdgeOut:
    """Read one edge gateway"""
    row = await edges_db.get(call.db, call.farm_id, call.param("edge_id"))
    if row is None:
        raise NotFound("edge not found")
    return EdgeOut.model_validate(_online(call, row))


async def rotate_token(call: Call) -> EdgeTokenOut:
    """Replace an edge's token; the old one stops working at once"""
    edge_id = call.param("edge_id")
    token = new_token()
    row = await edges_db.rotate(call.db, call.farm_id, edge_id, token_hash(token))
    if row is None:
        raise NotFound("edge not found")
    await audit.record(
        call.db, user_id=call.user_id, farm_id=call.farm_id, action="edge.rotate", target=edge_id
    )
    return _with_token(call, row, token)


async def delete_edge(call: Call) -> None:
    """Remove an edge gateway (its token stops working)"""
    edge_id = call.param("edge_id")
    if not await edges_db.delete(call.db, call.farm_id, edge_id):
        raise NotFound("edge not found")
    await audit.record(
        call.db, user_id=call.user_id, farm_id=call.farm_id, action="edge.delete", target=edge_id
    )


async def whoami(call: Call) -> EdgeIdentityOut:
    """Whom an edge token belongs to (edge token)

    `smartfarm edge register` asks before it writes the edge's config: an edge configured with
    another edge's id or farm would have every upload refused.
    """
    edge = await authenticate_edge(call)
    return EdgeIdentityOut(
        edge_id=edge["id"], farm_id=edge["farm_id"], name=edge["name"], protocol=PROTOCOL_VERSION
    )


ROUTES = [
    Route(
        "GET",
        "/api/farms/{farm_id}/edges",
        list_edges,
        "farm",
        role="owner",
        query=PageQuery,
        response=Page[EdgeOut],
        tag="edges",
    ),
    Route(
        "POST",
        "/api/farms/{farm_id}/edges",
        register_edge,
        "farm",
        role="owner",
        body=EdgeIn,
        response=EdgeTokenOut,
        status=201,
        tag="edges",
        errors=(409, 422),
    ),
    Route(
        "GET", "/api/edges/{edge_id}", get_edge, "edge", role="owner", response=EdgeOut, tag="edges"
    ),
    Route(
        "POST",
        "/api/edges/{edge_id}/rotate-token",
        rotate_token,
        "edge",
        role="owner",
        response=EdgeTokenOut,
        tag="edges",
    ),
    Route(
        "DELETE", "/api/edges/{edge_id}", delete_edge, "edge", role="owner", status=204, tag="edges"
    ),
    Route(
        "GET",
        "/api/edge/v1/whoami",
        whoami,
        "public",  # the handler authenticates the edge token itself
        response=EdgeIdentityOut,
        tag="edge sync",
        errors=(401, 429),  # bad tokens take from the address's unauthenticated budget
    ),
]
