"""The edge gateways' API (``/api/edge/v1/``): batch upload, the command and config stream, and
its polling fallback. Callers are edges, authenticated by their edge token (not a user token);
the protocol is ``shared.sync``."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud import appkeys
from cloud.api.routing import JSON_TYPE, Call, Route, bearer_token, client_ip
from cloud.api.schemas import In, Out
from cloud.auth.tokens import token_hash
from cloud.db import downlink
from cloud.db import iot_down as iot_down_db
from cloud.db import sync as sync_db
from cloud.errors import (
    BadRequest,
    CloudError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from cloud.middleware import problem_response
from cloud.sync.decode import DecodedBatch, decode_batch
from cloud.sync.ingest import ForeignReference, UnknownToken, store_batch, store_batch_for_token
from cloud.sync.iot_acks import (
    REPLY_HEADER,
    is_confirmation,
    log_confirmation,
    read_confirmation,
)
from cloud.sync.link import EdgeLink
from cloud.sync.service import EDGE_SYNC
from cloud.sync.writer import Counts
from shared.models import Id
from shared.sync import PROTOCOL_VERSION, BatchAck, DownMessage, EdgeStatus, Hello, UpMessage

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
MAX_WS_MESSAGE = 1024 * 1024
# An upload's token is checked by its batch's own transaction (one round trip fewer per batch),
# after the body is read and decoded; a body bigger than this has its token checked first.
PREAUTH_BYTES = 256 * 1024


async def authenticate_edge(call: Call) -> dict[str, Any]:
    """The edge whose token this is (401 otherwise; user tokens are not edge tokens). Failures
    take from the caller's address's budget of unauthenticated requests: past it, 429. A right
    token is never throttled, so an attacker sharing an edge's address cannot cut it off."""
    token = bearer_token(call.request)
    edge = None
    if token is not None:
        edge = await sync_db.edge_by_token(call.db, token_hash(token))
    if edge is None:
        call.app[appkeys.LIMITS].unauthenticated.take(client_ip(call.request))
        raise Unauthorized(
            "an edge token is required" if token is None else "unknown or revoked edge token"
        )
    return edge


async def confirm_destination(request: web.Request) -> web.Response:
    """AWS IoT's destination confirmation: unauthenticated, so limited per client address
    (every request) and in the log (a few an hour whatever the addresses); values of any other
    shape than AWS's are refused (422) and never logged."""
    limits = request.app[appkeys.LIMITS]
    limits.unauthenticated.take(client_ip(request))
    found = await read_confirmation(request)
    limits.confirmations.take("logged")
    log_confirmation(found)
    return web.json_response(
        {"status": "logged", "detail": "the confirmation URL is logged for an operator to open"}
    )


async def read_body(
    request: web.Request,
    limit: int,
    *,
    past: int | None = None,
    check: Callable[[], Awaitable[object]] | None = None,
) -> bytes:
    """The (already inflated: aiohttp decodes Content-Encoding) body, refused past ``limit``
    bytes while reading, so a small gzip bomb cannot inflate into memory. ``check`` (which may
    raise) is awaited once the body grows past ``past`` bytes."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the batch as application/json (gzip Content-Encoding)")
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await request.content.read(READ_CHUNK)
        except web.RequestPayloadError:  # what aiohttp raises for a body it cannot inflate
            raise BadRequest("the body could not be decoded (bad gzip?)") from None
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"a batch may inflate to at most {limit} bytes")
        if check is not None and past is not None and size > past:
            await check()
            check = None
        chunks.append(chunk)
    return b"".join(chunks)


async def upload_batch(call: Call) -> BatchAck | web.Response:
    """Upload a batch of outbox records (edge token; gzip JSON body)

    Stores each seq exactly once: seqs at or below the edge's high-water mark count as
    duplicates; a batch starting past mark + 1 is refused with 409 and `expected_seq`; a batch
    naming another farm's rooms, devices or commands is refused with 403 and nothing is stored.
    Through an AWS IoT topic rule (header `X-Smartfarm-Reply-Topic`), the answer is also
    published on the edge's acks topic; AWS IoT's destination confirmation is logged (200;
    422 for values not of AWS's shape, 429 past the limits of unauthenticated requests).
    Under load, a stored batch's answer carries `X-Smartfarm-Batch-Interval` (seconds): let
    readings that are not urgent gather at least that long before the next batch.
    """
    if is_confirmation(call.request):  # AWS IoT confirming the topic rule's destination
        return await confirm_destination(call.request)
    received_at = time.time()
    reply_topic = call.request.headers.get(REPLY_HEADER)
    token = bearer_token(call.request)
    if reply_topic is None and token is not None:
        edge, answer = await _ingest_by_token(call, token, received_at)
        if edge is not None:
            await _note_transport(call, edge, iot=False)
        return _paced(call, answer, received_at)
    edge = await authenticate_edge(call)
    await _note_transport(call, edge, iot=reply_topic is not None)
    if reply_topic is None:
        return _paced(call, await _ingest(call, edge, received_at), received_at)
    # Through an AWS IoT topic rule: whatever the answer, the edge hears it on its acks topic.
    try:
        answer = await _ingest(call, edge, received_at)
    except CloudError as exc:
        answer = problem_response(exc, call.request.path)
    if isinstance(answer, BatchAck):
        answer = _ack_response(answer)
    sync = call.app[EDGE_SYNC]
    assert isinstance(answer.body, bytes)
    if sync.iot_acks is not None:
        await sync.iot_acks.publish(edge, answer.body, reply_topic)
    elif edge["id"] not in sync.iot_unanswered:  # once per edge, not per batch
        sync.iot_unanswered.add(edge["id"])
        log.warning("edge %s sends batches through AWS IoT, but sync.iot_data_endpoint is not"
                    " set: the answers cannot reach it", edge["id"])
    return answer


def _paced(
    call: Call, answer: BatchAck | web.Response, received_at: float
) -> BatchAck | web.Response:
    """A stored batch's answer, with the batch interval this instance asks of edges under load
    (cloud.sync.pace) as a header; its time here counts toward that."""
    if not isinstance(answer, BatchAck):
        return answer
    pacer = call.app[EDGE_SYNC].pacer
    if not pacer.enabled:
        return answer
    pacer.observe(time.time() - received_at)
    header = pacer.header()
    return _ack_response(answer, header) if header else answer


def _ack_response(ack: BatchAck, headers: dict[str, str] | None = None) -> web.Response:
    """``ack`` as the response the route would make of it, with ``headers``."""
    return web.Response(body=ack.model_dump_json().encode(), content_type=JSON_TYPE,
                        headers=headers)


async def _note_transport(call: Call, edge: dict[str, Any], *, iot: bool) -> None:
    """Remember whether the edge's batches come through AWS IoT (it then listens on its IoT
    commands topic) or directly over HTTPS; a write only when that changes. Never fails the
    upload: the flag only adds a faster way down."""
    if (edge.get("iot_since") is not None) == iot:
        return
    try:
        changed = await iot_down_db.note_transport(
            call.db, edge["farm_id"], edge["id"], iot=iot
        )
    except CloudError as exc:
        log.warning("edge %s: could not record its uplink transport: %s", edge["id"], exc.detail)
        return
    if changed:
        log.info("edge %s sends its batches %s", edge["id"],
                 "through AWS IoT: commands and config are also published on its commands topic"
                 if iot else "over HTTPS (no longer through AWS IoT)")


async def confirm_iot_destination(call: Call) -> web.Response:
    """Take AWS IoT's topic rule destination confirmation (logged for an operator)

    AWS IoT posts it to `{confirmationUrl}/?confirmationToken=…`; with the batches URL as the
    confirmation URL, that is this path.
    """
    return await confirm_destination(call.request)


async def _read_batch(
    call: Call, *, check: Callable[[], Awaitable[object]] | None = None
) -> DecodedBatch | web.Response:
    """The request's batch, checked; a response when the body is unreadable or too large."""
    settings = call.app[appkeys.SETTINGS].sync
    try:
        raw = await read_body(call.request, settings.max_batch_bytes, past=PREAUTH_BYTES,
                              check=check)
    except (BadRequest, PayloadTooLarge) as exc:
        # The rest of the body is unreadable or unwanted: answer, then drop the connection
        # (aiohttp would otherwise try to drain the body and the client to reuse the socket).
        return _closing(exc, call)
    try:
        batch = decode_batch(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("malformed JSON body") from None
        raise ValidationFailed.from_pydantic(exc, "body") from None
    if batch.protocol != PROTOCOL_VERSION:
        raise ValidationFailed(
            [
                {
                    "field": "body.protocol",
                    "message": f"this cloud speaks protocol {PROTOCOL_VERSION}",
                    "type": "value_error",
                }
            ]
        )
    return batch


def _closing(exc: CloudError, call: Call) -> web.Response:
    response = problem_response(exc, call.request.path)
    response.force_close()
    return response


async def _ingest(
    call: Call, edge: dict[str, Any], received_at: float
) -> BatchAck | web.Response:
    batch = await _read_batch(call)
    if isinstance(batch, web.Response):
        return batch
    settings = call.app[appkeys.SETTINGS].sync
    sync = call.app[EDGE_SYNC]
    try:
        ack, counts = await store_batch(
            call.db,
            edge,
            batch,
            received_at=received_at,
            clock_threshold_s=settings.clock_correction_s,
            announce=sync.announcer.add,
        )
    except Exception as exc:
        sync.metrics.batches.labels(type(exc).__name__).inc()
        raise
    _stored(call, edge, batch, ack, counts)
    return ack


async def _ingest_by_token(
    call: Call, token: str, received_at: float
) -> tuple[dict[str, Any] | None, BatchAck | web.Response]:
    """``_ingest`` with the edge authenticated by the batch transaction's first statement
    instead of a query of its own. A request with a wrong token costs at most ``PREAUTH_BYTES``
    of body before it is refused: past that, or when the body is refused anyway, the token is
    checked on its own first, so a wrong one is still answered 401 (and counted against the
    caller's address) before anything else."""
    authenticated: list[dict[str, Any]] = []

    async def check() -> None:
        authenticated.append(await authenticate_edge(call))

    try:
        batch = await _read_batch(call, check=check)
    except CloudError:
        if not authenticated:
            await authenticate_edge(call)
        raise
    if isinstance(batch, web.Response):  # answered, the connection closes
        if not authenticated:
            try:
                await authenticate_edge(call)
            except CloudError as exc:
                return None, _closing(exc, call)
        return None, batch
    settings = call.app[appkeys.SETTINGS].sync
    sync = call.app[EDGE_SYNC]
    try:
        edge, ack, counts = await store_batch_for_token(
            call.db,
            token_hash(token),
            batch,
            received_at=received_at,
            clock_threshold_s=settings.clock_correction_s,
            announce=sync.announcer.add,
        )
    except UnknownToken:
        call.app[appkeys.LIMITS].unauthenticated.take(client_ip(call.request))
        raise
    except Exception as exc:
        sync.metrics.batches.labels(type(exc).__name__).inc()
        raise
    _stored(call, edge, batch, ack, counts)
    return edge, ack


def _stored(
    call: Call, edge: dict[str, Any], batch: DecodedBatch, ack: BatchAck, counts: Counts
) -> None:
    sync = call.app[EDGE_SYNC]
    sync.metrics.stored(counts)
    sync.batch_stored(edge["farm_id"], edge["id"])
    call.app[appkeys.METRICS].ingested.inc(counts.readings)
    log.debug(
        "edge %s batch %d-%d: %d new, %d duplicate",
        edge["id"],
        batch.first_seq,
        batch.last_seq,
        ack.inserted,
        ack.duplicates,
    )


async def _hello(ws: web.WebSocketResponse, edge: dict[str, Any], wait_s: float) -> Hello | None:
    try:
        msg = await ws.receive(timeout=wait_s)
    except TimeoutError:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"expected hello")
        return None
    if msg.type != WSMsgType.TEXT:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"expected hello")
        return None
    try:
        hello = Hello.model_validate_json(msg.data)
    except ValidationError:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"expected hello")
        return None
    if hello.edge_id != edge["id"] or hello.protocol != PROTOCOL_VERSION:
        log.warning("edge %s said hello as %r/%d", edge["id"], hello.edge_id[:100], hello.protocol)
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"wrong edge id or protocol")
        return None
    return hello


async def stream(call: Call) -> web.StreamResponse:
    """Open the command and config stream (edge token; WebSocket)

    The edge sends `Hello`; the cloud sends the current `ConfigPush` when the edge is behind, then
    pending `CloudCommand`s, then whatever is created later, within a second; the edge answers
    `ConfigApplied` and `CommandAccepted`.
    """
    edge = await authenticate_edge(call)
    sync = call.app[EDGE_SYNC]
    ws = web.WebSocketResponse(heartbeat=sync.config.heartbeat_s, max_msg_size=MAX_WS_MESSAGE)
    if not ws.can_prepare(call.request).ok:
        raise BadRequest("this endpoint is a WebSocket; send an Upgrade request")
    try:
        await ws.prepare(call.request)
    except ConnectionError:  # the edge hung up mid-handshake: nobody to answer
        log.info("edge %s left during the stream handshake", edge["id"])
        return ws
    # From here on the answer is the socket: errors close it (the edge reconnects with backoff)
    # instead of becoming a problem response.
    code = WSCloseCode.OK
    try:
        hello = await _hello(ws, edge, sync.config.hello_timeout_s)
        if hello is not None:
            log.info("edge %s connected (config version %d)", edge["id"], hello.config_version)
            await sync.serve(ws, edge, hello)
    except CloudError as exc:  # e.g. the database went away
        log.warning("edge %s stream closed: %s", edge["id"], exc.detail)
        code = WSCloseCode.TRY_AGAIN_LATER
    except ConnectionError:
        code = WSCloseCode.GOING_AWAY  # the edge went away mid-send
    except Exception:
        log.exception("edge %s stream failed", edge["id"])
        code = WSCloseCode.INTERNAL_ERROR
    finally:
        await ws.close(code=code)
        log.info("edge %s disconnected", edge["id"])
    return ws


class PendingQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    config_version: int | None = Field(
        default=None, ge=0, description="the version the edge has applied (default: last reported)"
    )
    edge_id: Id | None = Field(
        default=None, description="the id the edge is configured as (403 if not the token's)"
    )
    farm_id: Id | None = Field(
        default=None, description="the farm the edge is configured for (403 if not the token's)"
    )
    # The edge's health, as its stream's EdgeStatus carries it (shared.sync.status_query); left
    # out: unknown (older edges send neither, and the values last reported are kept).
    backlog: int | None = Field(
        default=None, ge=0, description="the edge's outbox records not yet uploaded"
    )
    software_version: str | None = Field(
        default=None, max_length=64, description="the edge's installed smartfarm version"
    )

    def status(self) -> EdgeStatus | None:
        """The health this poll reports, if it reports any."""
        if self.backlog is None and self.software_version is None:
            return None
        return EdgeStatus(backlog=self.backlog, software_version=self.software_version)


class PendingOut(Out):
    messages: list[DownMessage]


class EdgeMessagesIn(In):
    messages: list[UpMessage] = Field(max_length=1000)


async def pending(call: Call) -> PendingOut:
    """Poll for the stream's messages (edge token): the config if behind, pending commands

    An `edge_id` or `farm_id` that is not the token's edge is refused with 403 naming both, as a
    batch upload is. `backlog` and `software_version` are the edge's health, kept as the
    stream's `status` message is (left out: unknown, the last reported values stay).
    """
    edge = await authenticate_edge(call)
    q: PendingQuery = call.query
    _check_identity(edge, q)
    version = q.config_version if q.config_version is not None else edge["config_version"]
    link = EdgeLink(call.db, edge, call.app[EDGE_SYNC].config, config_version=version)
    messages = await link.catch_up()
    status = q.status()
    if status is None:
        await downlink.touch(call.db, edge["farm_id"], edge["id"])
    else:  # the stream's path, which marks the edge seen as well
        await link.receive(status)
    return PendingOut(messages=messages)


def _check_identity(edge: dict[str, Any], q: PendingQuery) -> None:
    """An edge polling under another id than its token's would poll "fine" while each of its
    uploads is refused: refuse the poll too, in the words the batch upload uses."""
    claimed_edge = q.edge_id if q.edge_id is not None else edge["id"]
    claimed_farm = q.farm_id if q.farm_id is not None else edge["farm_id"]
    if claimed_edge == edge["id"] and claimed_farm == edge["farm_id"]:
        return
    wrong = {"edge": [claimed_edge]} if claimed_edge != edge["id"] else {"farm": [claimed_farm]}
    said = f"edge {claimed_edge}" + (f" of farm {q.farm_id}" if q.farm_id is not None else "")
    raise ForeignReference(
        wrong,
        f"this token belongs to edge {edge['id']} of farm {edge['farm_id']}, not {said}:"
        " set the edge's cloud.edge_id (and farm_id) to match, or give it the token of the edge"
        " it is configured as",
    )


async def answer_pending(call: Call) -> None:
    """Answer polled messages (edge token): ConfigApplied, CommandAccepted, EdgeStatus"""
    edge = await authenticate_edge(call)
    body: EdgeMessagesIn = call.body
    link = EdgeLink(
        call.db, edge, call.app[EDGE_SYNC].config, config_version=edge["config_version"]
    )
    for message in body.messages:
        await link.receive(message)
    await downlink.touch(call.db, edge["farm_id"], edge["id"])


_BASE = "/api/edge/v1"
# Public for the user-token machinery: each handler authenticates the edge token itself.
ROUTES = [
    Route(
        "POST",
        _BASE + "/batches",
        upload_batch,
        "public",
        response=BatchAck,
        tag="edge sync",
        errors=(400, 401, 403, 409, 413, 415, 422, 429, 503),
    ),
    Route(
        "POST",
        _BASE + "/batches/",
        confirm_iot_destination,
        "public",
        tag="edge sync",
        errors=(422, 429),
    ),
    Route("GET", _BASE + "/stream", stream, "public", tag="edge sync", errors=(400, 401, 429)),
    Route(
        "GET",
        _BASE + "/pending",
        pending,
        "public",
        query=PendingQuery,
        response=PendingOut,
        tag="edge sync",
        errors=(401, 403, 422, 429),
    ),
    Route(
        "POST",
        _BASE + "/pending",
        answer_pending,
        "public",
        body=EdgeMessagesIn,
        status=204,
        tag="edge sync",
        errors=(401, 429),
    ),
]
