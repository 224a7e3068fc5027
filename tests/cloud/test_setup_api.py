"""Set-up from the web, through the API the set-up page uses: a device's credentials shown once
with its broker, topics, QR code and snippets; where a farm's devices find their broker; an
edge's registration commands; open invitations with room grants (list, renew, revoke, accept);
and "send test" for notification settings, delivered to a real SMTP server and webhook."""

from __future__ import annotations

import base64
import io
import json
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
import segno
from aiohttp import web
from aiosmtpd.controller import Controller

from cloud.app import init_app
from cloud.notify.webhook import verify
from tests.cloud import world as w
from tests.cloud.conftest import make_settings

pytestmark = pytest.mark.postgres


async def _json(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json() if status != 204 else None


async def test_a_new_device_gets_its_credentials_topics_qr_and_snippets_once(
    world_client: Any, auth: Any
) -> None:
    owner = auth("owner")
    # No device network yet: the credentials say so (host null, the embedded broker's port).
    made = await _json(
        await world_client.post(
            f"/api/rooms/{w.ROOM_A}/devices",
            json={"id": "wf-a-probe", "kind": "sensor", "name": "Probe"},
            headers=owner,
        ),
        201,
    )
    mqtt = made["mqtt"]
    assert mqtt["broker"] == {"host": None, "port": 1884, "tls": False}
    assert mqtt["username"] == mqtt["client_id"] == "wf-a-probe" and len(mqtt["password"]) >= 24
    base = f"farm/{w.FARM}/room/{w.ROOM_A}"
    assert mqtt["publish_topics"] == [
        f"{base}/telemetry/wf-a-probe",
        f"{base}/status/wf-a-probe",
        f"{base}/ack/wf-a-probe",
    ]
    assert mqtt["subscribe_topics"] == [f"{base}/command/wf-a-probe"]
    assert "broker: !secret edge_host" in mqtt["esphome_yaml"]  # no device network set yet

    # The farm says where its edge is; the next device's credentials carry it everywhere.
    viewer, operator = auth("viewer"), auth("operator")
    net_path = f"/api/farms/{w.FARM}/device-network"
    assert (await _json(await world_client.get(net_path, headers=viewer)))["mqtt_host"] is None
    denied = await world_client.put(net_path, json={"mqtt_host": "10.0.0.5"}, headers=operator)
    assert denied.status == 403
    bad = await world_client.put(net_path, json={"mqtt_host": "pi farm"}, headers=owner)
    assert bad.status == 422
    assert "body.mqtt_host" in [e["field"] for e in (await bad.json())["errors"]]
    bad_port = await world_client.put(
        net_path, json={"mqtt_host": "pi.local", "mqtt_port": 70000}, headers=owner
    )
    assert bad_port.status == 422
    net = await _json(
        await world_client.put(
            net_path, json={"mqtt_host": "192.168.1.20", "mqtt_port": 1884}, headers=owner
        )
    )
    assert net["mqtt_host"] == "192.168.1.20" and net["updated_at"]
    assert (await _json(await world_client.get(net_path, headers=viewer)))["mqtt_port"] == 1884

    made = await _json(
        await world_client.post(
            f"/api/rooms/{w.ROOM_A}/devices",
            json={"id": "wf-a-fan2", "kind": "actuator", "actuator": "exhaust_fan"},
            headers=owner,
        ),
        201,
    )
    mqtt = made["mqtt"]
    assert mqtt["broker"] == {"host": "192.168.1.20", "port": 1884, "tls": False}
    doc = json.loads(mqtt["provisioning"])
    assert doc["device"] == doc["username"] == "wf-a-fan2"
    assert doc["password"] == mqtt["password"] and doc["host"] == "192.168.1.20"
    assert doc["kind"] == "actuator" and doc["actuator"] == "exhaust_fan"
    assert doc["subscribe"]["command"] == f"{base}/command/wf-a-fan2"
    assert list(doc["publish"].values()) == mqtt["publish_topics"]
    # The QR code is an SVG data URI encoding exactly the provisioning text.
    prefix = "data:image/svg+xml;base64,"
    assert mqtt["qr_svg"].startswith(prefix)
    svg = base64.b64decode(mqtt["qr_svg"][len(prefix) :]).decode()
    assert svg.lstrip().startswith("<svg") and "wf-a-fan2" in svg  # its title names it
    expected = io.BytesIO()
    segno.make(mqtt["provisioning"], error="m", micro=False).save(
        expected, kind="svg", scale=4, border=4, dark="#000", light="#fff",
        title="MQTT credentials of device wf-a-fan2", xmldecl=False)
    assert svg == expected.getvalue().decode()
    assert 'broker: "192.168.1.20"' in mqtt["esphome_yaml"]
    assert mqtt["password"] in mqtt["esphome_yaml"]
    assert "${command_topic}" in mqtt["esphome_yaml"]  # an actuator answers commands
    assert "smartfarm sim node --provisioning wf-a-fan2.json" in mqtt["sim_command"]
    assert mqtt["provisioning"] in mqtt["sim_command"]
    # Shown once: reading the device back has no password.
    again = await _json(await world_client.get("/api/devices/wf-a-fan2", headers=owner))
    assert "mqtt" not in again and "password" not in json.dumps(again)


async def test_an_edge_registration_shows_the_commands_with_its_token(
    world_client: Any, auth: Any
) -> None:
    owner = auth("owner")
    made = await _json(
        await world_client.post(
            f"/api/farms/{w.FARM}/edges", json={"id": "wf-pi", "name": "Shed Pi"}, headers=owner
        ),
        201,
    )
    url = str(world_client.make_url("")).rstrip("/")
    assert made["cloud_url"] == url
    token = made["token"]
    assert made["register_command"] == (
        f"smartfarm edge register --cloud {url} --token {token} --edge-id wf-pi --config edge.toml"
    )
    assert made["init_command"] == (
        f"smartfarm edge init /srv/smartfarm --cloud {url} --token {token} --edge-id wf-pi"
    )
    assert made["online"] is False
    rotated = await _json(
        await world_client.post("/api/edges/wf-pi/rotate-token", headers=owner)
    )
    assert rotated["token"] != token and rotated["token"] in rotated["register_command"]
    listed = await _json(await world_client.get(f"/api/farms/{w.FARM}/edges", headers=owner))
    assert {e["id"]: e["online"] for e in listed["items"]}["wf-pi"] is False
    assert all("token" not in e for e in listed["items"])
    assert (
        await world_client.post(
            f"/api/farms/{w.FARM}/edges", json={"name": "x"}, headers=auth("operator")
        )
    ).status == 403


async def test_invitations_with_room_grants_are_listed_renewed_revoked_and_accepted(
    world_client: Any, auth: Any
) -> None:
    owner = auth("owner")
    members = f"/api/farms/{w.FARM}/members"
    invites = f"/api/farms/{w.FARM}/invites"
    picker = await _json(
        await world_client.post(
            members,
            json={"email": "Picker@Example.com", "role": "operator", "room_ids": [w.ROOM_A]},
            headers=owner,
        ),
        201,
    )
    first = picker["invite_token"]
    assert first and picker["activated"] is False and picker["room_ids"] == [w.ROOM_A]
    assert picker["invite_url"] == f"{str(world_client.make_url('')).rstrip('/')}/#/invite/{first}"
    assert picker["invite_email"]["status"] == "off"  # no mail server here: copy the link
    bad = await world_client.post(
        members, json={"email": "x@example.com", "role": "owner", "room_ids": [w.ROOM_A]},
        headers=owner,
    )
    assert bad.status == 422
    assert [e["field"] for e in (await bad.json())["errors"]] == ["body.room_ids"]
    guest = await _json(
        await world_client.post(
            members, json={"email": "guest@example.com", "role": "viewer"}, headers=owner
        ),
        201,
    )
    listed = await _json(await world_client.get(invites, headers=owner))
    by_email = {i["email"]: i for i in listed}
    assert set(by_email) == {"picker@example.com", "guest@example.com"}
    assert by_email["picker@example.com"]["room_ids"] == [w.ROOM_A]
    assert by_email["picker@example.com"]["role"] == "operator"
    assert by_email["guest@example.com"]["room_ids"] is None
    assert by_email["picker@example.com"]["invite_expires_at"]
    assert (await world_client.get(invites, headers=auth("operator"))).status == 403

    # Renewed: the old link stops working, the new one signs the invitee in.
    renewed = await _json(
        await world_client.post(f"{invites}/{picker['user_id']}/renew", headers=owner)
    )
    assert renewed["invite_token"] != first and renewed["room_ids"] == [w.ROOM_A]
    assert renewed["invite_url"].endswith(renewed["invite_token"])
    stale = await world_client.post(
        "/api/auth/accept-invite", json={"token": first, "password": "a long new password"}
    )
    assert stale.status == 401
    tokens = await _json(
        await world_client.post(
            "/api/auth/accept-invite",
            json={"token": renewed["invite_token"], "password": "a long new password"},
        )
    )
    as_picker = {"Authorization": f"Bearer {tokens['access_token']}"}
    rooms = await _json(await world_client.get(f"/api/farms/{w.FARM}/rooms", headers=as_picker))
    assert [r["id"] for r in rooms["items"]] == [w.ROOM_A]  # the grant holds
    listed = await _json(await world_client.get(invites, headers=owner))
    assert [i["email"] for i in listed] == ["guest@example.com"]
    accepted = await world_client.post(f"{invites}/{picker['user_id']}/renew", headers=owner)
    assert accepted.status == 409

    # Revoked: the guest leaves the farm and their link no longer works.
    assert (
        await world_client.delete(f"{invites}/{guest['user_id']}", headers=owner)
    ).status == 204
    gone = await world_client.post(
        "/api/auth/accept-invite",
        json={"token": guest["invite_token"], "password": "a long new password"},
    )
    assert gone.status == 401
    assert await _json(await world_client.get(invites, headers=owner)) == []
    assert (await world_client.delete(f"{invites}/{guest['user_id']}", headers=owner)).status == 404
    assert (
        await world_client.delete(f"{invites}/{picker['user_id']}", headers=owner)
    ).status == 409


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


async def test_send_test_goes_through_each_configured_channel_and_says_how_it_went(
    aiohttp_client: Any, aiohttp_server: Any, world_dsn: str, tmp_path: Path, port: int, auth: Any
) -> None:
    received: list[dict[str, Any]] = []
    answer = {"status": 204}

    async def handle(request: web.Request) -> web.Response:
        received.append({"headers": dict(request.headers), "body": await request.read()})
        return web.Response(status=answer["status"])

    hook_app = web.Application()
    hook_app.router.add_post("/hook", handle)
    hook = await aiohttp_server(hook_app)
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        notify = {
            "allow_private_webhooks": True,
            "webhook_timeout_s": 3,
            "smtp": {"host": "127.0.0.1", "port": port, "starttls": False},
        }
        client = await aiohttp_client(
            init_app(make_settings(world_dsn, tmp_path, notify=notify))
        )
        viewer = auth("viewer")
        test_path = "/api/users/me/notification-preferences/test"
        # Nothing configured: only in-app, and the others say what to set.
        result = await _json(await client.post(test_path, headers=viewer))
        assert {c["channel"]: c["status"] for c in result["channels"]} == {
            "in_app": "sent", "email": "off", "webhook": "off"}
        prefs = await _json(
            await client.put(
                "/api/users/me/notification-preferences",
                json={
                    "email_enabled": True,
                    "email": "grower@example.com",
                    "webhook_url": str(hook.make_url("/hook")),
                    "quiet_start": "00:00",
                    "quiet_end": "23:59",  # a test is never held by quiet hours
                    "timezone": "Europe/Paris",
                },
                headers=viewer,
            )
        )
        secret = prefs["webhook_secret"]
        result = await _json(await client.post(test_path, headers=viewer))
        by = {c["channel"]: c for c in result["channels"]}
        assert by["email"]["status"] == "sent" and by["email"]["target"] == "grower@example.com"
        assert by["webhook"]["status"] == "sent", by["webhook"]
        assert len(inbox.messages) == 1
        assert inbox.messages[0].rcpt_tos == ["grower@example.com"]
        assert b"Test notification" in inbox.messages[0].content
        body = received[-1]["body"]
        headers = received[-1]["headers"]
        assert verify(secret, headers["X-Smartfarm-Timestamp"], body,
                      headers["X-Smartfarm-Signature"])
        assert json.loads(body)["kind"] == "test"
        notes = await _json(await client.get("/api/notifications", headers=viewer))
        assert result["notification_id"] in [n["id"] for n in notes["items"]]

        # With a mail server, an invitation is emailed with its link.
        invited = await _json(
            await client.post(
                f"/api/farms/{w.FARM}/members",
                json={"email": "new.hand@example.com", "role": "viewer"},
                headers=auth("owner"),
            ),
            201,
        )
        assert invited["invite_email"]["status"] == "sent"
        letter = inbox.messages[-1]
        assert letter.rcpt_tos == ["new.hand@example.com"]
        text = message_from_bytes(letter.content, policy=default).get_content()
        assert invited["invite_url"] in text and "World farm" in text

        # A receiver that refuses: the test says so, with the answer.
        answer["status"] = 410
        result = await _json(await client.post(test_path, headers=viewer))
        by = {c["channel"]: c for c in result["channels"]}
        assert by["webhook"]["status"] == "failed" and "410" in by["webhook"]["detail"]
        # Five tests in ten minutes, then 429 with Retry-After.
        for _ in range(2):
            await _json(await client.post(test_path, headers=viewer))
        limited = await client.post(test_path, headers=viewer)
        assert limited.status == 429 and limited.headers["Retry-After"]
        assert (await client.post(test_path)).status == 401
    finally:
        controller.stop()
