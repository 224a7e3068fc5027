"""Firmware updates over the LAN (``edge.firmware``): the images stored on the edge, the update
offered to each device and how far it got, offering and cancelling one (admin login), and the
download a device makes with the token its ``ota`` command carries (no login: the token is the
credential, good for that device's current offer only)."""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from edge.api import keys, views
from edge.api.problems import ApiError, NotFound, ValidationFailed
from edge.api.schemas import parse_body, parse_query
from edge.firmware import (
    MAX_IMAGE_BYTES,
    OFFER_TTL_S,
    TOKEN_RE,
    VERSION_RE,
    FirmwareError,
    FirmwareStore,
    Offer,
    cancel_offer,
    mark_downloaded,
    mark_failed,
    mark_installed,
    new_token,
    offer_for_token,
    offer_state,
    offers,
    running_version,
    save_offer,
)
from edge.store import commands as command_rows
from edge.store import devices as device_rows
from shared.models import Ack, FirmwareOffer, utcnow

log = logging.getLogger(__name__)

DOWNLOAD_PREFIX: Final = "/firmware/"


class Gone(ApiError):
    status = 410
    title = "Gone"
    slug = "gone"


class TooLarge(ApiError):
    status = 413
    title = "Payload too large"
    slug = "too-large"


class UploadQuery(BaseModel):
    """``POST /api/firmware?version=V[&device=ID][&filename=NAME]``, the image as the body."""

    model_config = ConfigDict(extra="forbid", str_max_length=120)
    version: str = Field(pattern=VERSION_RE.pattern, description="the version it reports")
    device: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                               description="the one device it is for (ESPHome images hold"
                                           " their node's secrets); none: any device")
    filename: str | None = Field(default=None, description="the file it came from")


class OfferBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=64)
    version: str = Field(pattern=VERSION_RE.pattern, description="a stored image's version")


def store_of(request: web.Request) -> FirmwareStore:
    return FirmwareStore(request.app[keys.SETTINGS].data_path / "firmware")


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed([{"field": field, "message": message, "type": "value_error"}])


def is_loopback(host: str) -> bool:
    """Whether a Host header (``name``, ``name:port``, ``[v6]:port``) names this machine's
    loopback, which no device can reach."""
    try:
        name = (URL(f"http://{host}").host or "").lower()
    except ValueError:
        return False
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


def base_url(request: web.Request) -> str:
    """Where the devices reach this server: ``api.firmware_base_url``, else the address this
    request came to (the operator's browser is on the LAN too), never a loopback one."""
    configured = request.app[keys.SETTINGS].api.firmware_base_url
    if configured:
        return configured.rstrip("/")
    host = request.host
    if not host or is_loopback(host):
        raise _invalid(
            "version",
            f"devices cannot download from {host or 'this address'} (it is this machine's"
            " loopback): open this page at the edge's LAN address, or set"
            " api.firmware_base_url (e.g. http://192.168.1.10:8088) in the edge config")
    return f"{request.scheme}://{host}"


def _update_view(offer: Offer, command: dict[str, Any] | None, running: str | None,
                 now: float) -> dict[str, Any]:
    state, detail = offer_state(offer, command["state"] if command else None,
                                command.get("error") if command else None, running, now)
    return {
        "device_id": offer.device_id,
        "version": offer.version,
        "sha256": offer.sha256,
        "state": state,
        "detail": detail,
        "command_id": offer.command_id,
        "offered_at": views.iso(offer.offered_at),
        "offered_by": offer.offered_by,
        "expires_at": views.iso(offer.expires_at),
        "from_firmware": offer.from_firmware,
        "running": running,
        "downloaded_at": views.iso(offer.downloaded_at),
        "installed_at": views.iso(offer.installed_at),
    }


async def list_firmware(request: web.Request) -> web.Response:
    """The stored images (newest first) and each device's update: what it runs, what it was
    offered and where that stands (offered, downloading, installed, failed, expired)."""
    store = store_of(request)
    try:
        images = await asyncio.to_thread(store.images)
    except FirmwareError as exc:
        log.error("firmware index: %s", exc)
        images = []
    now = utcnow().timestamp()

    def read(conn: Any) -> tuple[dict[str, Offer], dict[str, Any], dict[str, str | None]]:
        found = offers(conn)
        cmds = {o.command_id: command_rows.get(conn, o.command_id) for o in found.values()}
        running = {s.device_id: s.firmware for s in device_rows.all_status(conn)}
        return found, cmds, running

    found, cmds, running = await request.app[keys.DB].read(read)
    updates = []
    for device_id, offer in sorted(found.items()):
        now_running = running.get(device_id)
        if offer.installed_at is None and running_version(now_running) == offer.version:
            # Settle it for good: the token dies and the time is kept.
            if await request.app[keys.DB].write(mark_installed, device_id, now_running, now):
                offer = dataclasses.replace(offer, installed_at=now)
        updates.append(_update_view(offer, cmds.get(offer.command_id), now_running, now))
    return web.json_response({
        "images": [i.view() | {"added_at": views.iso(i.added_at)} for i in images],
        "updates": updates,
        "devices": {d: {"firmware": f, "version": running_version(f)}
                    for d, f in sorted(running.items())},
    })


async def upload_firmware(request: web.Request) -> web.Response:
    """Store a firmware image sent as the body (``application/octet-stream``, at most
    MAX_IMAGE_BYTES); its sha256 and MD5 are computed here. The same checks as ``smartfarm edge
    firmware add``: an application image (first byte 0xE9), a new version, a known device."""
    query = parse_query(request, UploadQuery)
    if query.device is not None and request.app[keys.AUTOMATION].device(query.device) is None:
        raise _invalid("device", f"no device {query.device!r} on this edge")
    too_large = TooLarge(
        f"file: an OTA image is at most {MAX_IMAGE_BYTES} bytes",
        errors=[{"field": "file", "type": "too_large",
                 "message": f"at most {MAX_IMAGE_BYTES} bytes"}])
    if (request.content_length or 0) > MAX_IMAGE_BYTES:
        raise too_large
    store = store_of(request)
    with store.staging() as (path, out):
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > MAX_IMAGE_BYTES:
                raise too_large
            out.write(chunk)
        out.flush()
        try:
            image = await asyncio.to_thread(
                store.add, path, version=query.version,
                devices=(query.device,) if query.device else (),
                filename=query.filename or "uploaded")
        except FirmwareError as exc:
            raise _invalid(exc.field, str(exc)) from None
    log.info("firmware %s (%s, %d bytes) uploaded by %s", image.version, image.sha256[:12],
             image.size, request[keys.IDENTITY].user)
    return web.json_response(image.view() | {"added_at": views.iso(image.added_at)},
                             status=201)


async def offer_firmware(request: web.Request) -> web.Response:
    """Offer a stored image to a device: an ``ota`` command with a fresh download link."""
    device_id = request.match_info["device_id"]
    automation = request.app[keys.AUTOMATION]
    device = automation.device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    body = await parse_body(request, OfferBody)
    store = store_of(request)
    try:
        image = await asyncio.to_thread(store.for_device, device_id, body.version)
    except FirmwareError as exc:
        raise _invalid(exc.field, str(exc)) from None
    db = request.app[keys.DB]
    status = await db.read(device_rows.get, device_id)
    running = status.firmware if status is not None else None
    if running_version(running) == image.version:
        raise _invalid("version", f"{device_id} already runs {image.version}")
    base = base_url(request)
    token, digest = new_token()
    offer = FirmwareOffer(
        version=image.version, url=f"{base}{DOWNLOAD_PREFIX}{token}.bin", md5=image.md5,
        md5_url=f"{base}{DOWNLOAD_PREFIX}{token}.md5", sha256=image.sha256, size=image.size,
    )
    user = request[keys.IDENTITY].user
    now = utcnow().timestamp()
    record = Offer(device_id=device_id, version=image.version, sha256=image.sha256,
                   command_id="", offered_at=now, offered_by=user, expires_at=now + OFFER_TTL_S,
                   from_firmware=running, downloaded_at=None, installed_at=None)
    # Stored before the command goes out, so the device's download finds it.
    await db.write(save_offer, record, digest, urgent=True)
    command_id = await request.app[keys.COMMANDS].send(
        device_id=device_id, room_id=device.room, action="ota", source="manual",
        reason=f"firmware {image.version} offered by {user}", firmware=offer,
    )
    await db.write(_set_command, device_id, digest, command_id, urgent=True)
    log.info("firmware %s (%s) offered to %s by %s", image.version, image.sha256[:12],
             device_id, user)
    return web.json_response(
        {"device_id": device_id, "version": image.version, "command_id": command_id,
         "sha256": image.sha256, "size": image.size, "url_base": base,
         "expires_at": views.iso(record.expires_at)},
        status=202,
    )


def _set_command(conn: Any, device_id: str, digest: str, command_id: str) -> None:
    conn.execute("UPDATE firmware_updates SET command_id = ? WHERE device_id = ? AND"
                 " token_hash = ?", (command_id, device_id, digest))


async def cancel_firmware(request: web.Request) -> web.Response:
    """Withdraw a device's offer: its download link stops working at once."""
    device_id = request.match_info["device_id"]
    if not await request.app[keys.DB].write(cancel_offer, device_id, urgent=True):
        raise NotFound(f"no firmware update offered to {device_id!r}")
    log.info("firmware offer to %s withdrawn by %s", device_id, request[keys.IDENTITY].user)
    return web.Response(status=204)


async def download(request: web.Request) -> web.StreamResponse:
    """``/firmware/<token>.bin`` (the image, ranges allowed) or ``.md5`` (its MD5 as 32 hex
    digits, what ESPHome's ``md5_url`` reads)."""
    token, _, ext = request.match_info["name"].rpartition(".")
    if ext not in ("bin", "md5") or TOKEN_RE.fullmatch(token) is None:
        raise NotFound("no such firmware download")
    db = request.app[keys.DB]
    offer = await db.read(offer_for_token, token, utcnow().timestamp())
    status = await db.read(device_rows.get, offer.device_id) if offer is not None else None
    if offer is not None and status is not None and (
            running_version(status.firmware) == offer.version):
        # It runs the offered version already: the link is used up (settled here too, in case
        # nobody has looked at the updates since).
        await db.write(mark_installed, offer.device_id, status.firmware, utcnow().timestamp())
        offer = None
    if offer is None:
        raise NotFound("this firmware link is unknown, withdrawn, replaced or expired")
    image = await asyncio.to_thread(store_of(request).by_sha256, offer.sha256)
    path = store_of(request).path(image) if image is not None else None
    if image is None or path is None or not path.is_file():
        raise Gone(f"firmware {offer.version} was removed from the edge; offer another")
    headers = {"Cache-Control": "no-store", "X-Firmware-Version": offer.version}
    if ext == "md5":
        return web.Response(text=image.md5, content_type="text/plain", headers=headers)
    db.write_nowait(mark_downloaded, offer.device_id, utcnow().timestamp())
    log.info("%s downloading firmware %s from %s", offer.device_id, offer.version,
             request.remote)
    response = web.FileResponse(path, headers={**headers,
                                               "Content-Type": "application/octet-stream"})
    return response


def watch_acks(app: web.Application) -> None:
    """Record an ``ota`` command's error ack on its offer (the edge settles a command at its
    first ack; a device that took an offer and then failed to download or check it says so
    with a second one)."""
    db = app[keys.DB]

    def observe(device_id: str, ack: Ack) -> None:
        if ack.status == "error":
            db.write_nowait(mark_failed, device_id, ack.command_id, ack.error or "device error")

    app[keys.COMMANDS].ack_observers.append(observe)


def add_firmware_routes(app: web.Application) -> None:
    if keys.COMMANDS in app and keys.DB in app:
        watch_acks(app)
    app.router.add_get("/api/firmware", list_firmware)
    app.router.add_post("/api/firmware", upload_firmware)
    app.router.add_post("/api/devices/{device_id}/firmware", offer_firmware)
    app.router.add_delete("/api/devices/{device_id}/firmware", cancel_firmware)
    app.router.add_get(DOWNLOAD_PREFIX + "{name}", download)
