"""Notifications: edge alerts become one notification per episode (then a reminder, then
"resolved"), never a storm; in-app with an unread count; email to a local SMTP server; webhooks
signed with HMAC and retried; per-user preferences, quiet hours and the hourly cap."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from cloud.app import init_app
from cloud.db import notify as notify_db
from cloud.db import sync as sync_db
from cloud.notify import policy
from cloud.notify.dispatch import send_notification
from cloud.notify.episodes import notify_alert
from cloud.notify.webhook import verify
from tests.cloud import world as w
from tests.cloud.conftest import make_settings
from tests.cloud.jobs_env import jobs_env_fixture  # noqa: F401

pytestmark = pytest.mark.postgres

# Farm F's members who may see room B: owner, operator, viewer and the Cognito operator (the
# room-limited operator has room A only).
ROOM_B_MEMBERS = 4
# "Resolved" at once; a reminder after 30 min (tests make it due by moving next_notice_at).
QUICK = {"reopen_within_s": 0, "reminder_after_min": 30, "max_reminders": 1}


async def edge_alert(  # type: ignore[no-untyped-def]
    env,
    key: str,
    state: str,
    *,
    severity: str = "warning",
    kind: str = "out_of_band",
    room: str | None = w.ROOM_B,
    at: datetime | None = None,
) -> None:
    """What the edge sync stores for an uploaded alert (the trigger takes it from there)."""
    async with env.db.transaction() as cur:
        await sync_db.alert(
            cur,
            {
                "edge_id": w.EDGE,
                "farm_id": w.FARM,
                "key": key,
                "kind": kind,
                "severity": severity,
                "message": f"{room}: humidity_pct 78 outside [85, 90]",
                "room_id": room,
                "device_id": None,
                "state": state,
                "at": at or datetime.now(UTC),
            },
        )


async def notices(env, kind: str | None = None) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    rows = await env.db.fetch_all(
        "SELECT user_id, kind, title, body, severity FROM notifications "
        "WHERE episode_id IS NOT NULL ORDER BY id"
    )
    return [r for r in rows if kind is None or r["kind"] == kind]


async def set_prefs(env, role: str, world, **values: Any) -> None:  # type: ignore[no-untyped-def]
    await notify_db.set_preferences(env.db, world.user_ids[role], {**policy.DEFAULTS, **values})


def test_quiet_hours_cross_midnight_in_the_users_time_zone() -> None:
    start, end = time(22, 0), time(7, 0)
    # 21:30 UTC is 23:30 in Paris (summer): quiet until 07:00 Paris = 05:00 UTC next day.
    late = datetime(2030, 7, 1, 21, 30, tzinfo=UTC)
    assert policy.quiet_until(late, start, end, "Europe/Paris") == datetime(
        2030, 7, 2, 5, 0, tzinfo=UTC
    )
    early = datetime(2030, 7, 2, 3, 0, tzinfo=UTC)  # 05:00 in Paris
    assert policy.quiet_until(early, start, end, "Europe/Paris") == datetime(
        2030, 7, 2, 5, 0, tzinfo=UTC
    )
    noon = datetime(2030, 7, 2, 10, 0, tzinfo=UTC)
    assert policy.quiet_until(noon, start, end, "Europe/Paris") is None
    assert policy.quiet_until(noon, time(9), time(17), "UTC") == datetime(
        2030, 7, 2, 17, 0, tzinfo=UTC
    )
    prefs = policy.with_defaults({"quiet_start": start, "quiet_end": end, "timezone": "UTC"})
    assert policy.hold(prefs, "critical", late) is None  # critical is never held
    assert (
        policy.channels(
            policy.with_defaults({"webhook_url": "https://x"}), "info", email_possible=True
        )
        == []
    )  # below the default minimum (warning)
    assert policy.severity("ERROR") == "critical" and policy.severity("odd") == "warning"


async def test_one_alert_one_reminder_one_resolved_for_each_member(jobs_env, world) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env(notify=QUICK)
    await edge_alert(env, "band:wf-b:humidity_pct", "active")
    # The trigger queued process_alerts at once.
    assert [j.task_name for j in await env.jobs(status="todo")] == ["process_alerts"]
    await env.work()
    alerts = await notices(env, "alert")
    assert len(alerts) == ROOM_B_MEMBERS
    assert {a["user_id"] for a in alerts} == {
        world.user_ids[r] for r in ("owner", "operator", "viewer", "cognito")
    }
    assert alerts[0]["title"] == f"Out of band: {w.ROOM_B}" and alerts[0]["severity"] == "warning"
    # The edge repeats the active alert (its count moves): nothing new.
    await edge_alert(env, "band:wf-b:humidity_pct", "active")
    await env.work()
    assert len(await notices(env)) == ROOM_B_MEMBERS
    (due,) = await env.db.fetch_all(
        "SELECT next_notice_at - started_at AS wait FROM alert_episodes"
    )
    assert due["wait"] == timedelta(minutes=30)
    await env.db.execute("UPDATE alert_episodes SET next_notice_at = now()")  # 30 min later
    await env.queue.defer("process_alerts")
    await env.work()
    assert len(await notices(env)) == 2 * ROOM_B_MEMBERS
    assert len(await notices(env, "reminder")) == ROOM_B_MEMBERS
    await env.queue.defer("process_alerts")  # one reminder only
    await env.work()
    assert len(await notices(env)) == 2 * ROOM_B_MEMBERS
    await edge_alert(env, "band:wf-b:humidity_pct", "resolved")
    await env.work()
    resolved = await notices(env, "resolved")
    assert len(resolved) == ROOM_B_MEMBERS
    assert resolved[0]["title"].startswith("Resolved: out of band")
    (episode,) = await env.db.fetch_all("SELECT state, reminders, notified FROM alert_episodes")
    assert episode == {"state": "resolved", "reminders": 1, "notified": True}


async def test_a_flapping_alert_continues_its_episode_silently(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env(notify={"reopen_within_s": 600, "reminder_after_min": 30})
    key = "band:wf-b:co2_ppm"
    for state in ("active", "resolved", "active", "resolved", "active"):
        await edge_alert(env, key, state)
        await env.work()
    assert [n["kind"] for n in await notices(env)] == ["alert"] * ROOM_B_MEMBERS
    episodes = await env.db.fetch_all("SELECT state FROM alert_episodes")
    assert episodes == [{"state": "active"}]


async def test_stale_alerts_are_recorded_but_notify_nobody(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env(notify=QUICK)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    await edge_alert(env, "silent:wf-b-sensor", "active", kind="sensor_silent", at=yesterday)
    await edge_alert(
        env,
        "silent:wf-b-sensor",
        "resolved",
        kind="sensor_silent",
        at=yesterday + timedelta(hours=1),
    )
    await env.work()
    assert await notices(env) == []
    (episode,) = await env.db.fetch_all("SELECT state, notified FROM alert_episodes")
    assert episode == {"state": "resolved", "notified": False}


@pytest.fixture
async def hook(aiohttp_server):  # type: ignore[no-untyped-def]
    """A webhook receiver that fails its first call (500), then accepts."""
    received: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append({"headers": dict(request.headers), "body": await request.read()})
        return web.Response(status=500 if len(received) == 1 else 204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook")), received


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp(port: int) -> Any:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


async def test_email_and_signed_webhook_with_a_retry(jobs_env, world, hook, smtp) -> None:  # type: ignore[no-untyped-def]
    url, received = hook
    smtp_port, inbox = smtp
    env = await jobs_env(
        notify={
            **QUICK,
            "allow_private_webhooks": True,
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "starttls": False},
        },
    )
    secret = "s" * 32
    await set_prefs(
        env,
        "owner",
        world,
        webhook_url=url,
        webhook_secret=secret,
        email_enabled=True,
        email="grower@example.com",
    )
    await edge_alert(
        env, "runaway:wf-b-hum", "active", kind="actuator_runaway", severity="critical"
    )
    await env.work()
    # The webhook failed once (500) and was retried at once (no backoff in tests).
    assert len(received) == 2
    last = received[-1]
    headers, body = last["headers"], last["body"]
    assert verify(secret, headers["X-Smartfarm-Timestamp"], body, headers["X-Smartfarm-Signature"])
    assert not verify(
        "wrong" * 8, headers["X-Smartfarm-Timestamp"], body, headers["X-Smartfarm-Signature"]
    )
    payload = json.loads(body)
    assert payload["kind"] == "alert" and payload["severity"] == "critical"
    assert payload["episode"]["key"] == "runaway:wf-b-hum"
    assert headers["X-Smartfarm-Delivery"] == received[0]["headers"]["X-Smartfarm-Delivery"]
    (mail,) = inbox.messages
    assert mail.rcpt_tos == ["grower@example.com"]
    text = mail.content.decode()
    assert "Subject: [smartfarm] Actuator running away: wf-b" in text
    deliveries = await env.db.fetch_all(
        "SELECT channel, status, attempts FROM notification_deliveries ORDER BY channel"
    )
    assert deliveries == [
        {"channel": "email", "status": "sent", "attempts": 1},
        {"channel": "webhook", "status": "sent", "attempts": 2},
    ]


async def test_hourly_cap_suppresses_the_excess(jobs_env, world, hook) -> None:  # type: ignore[no-untyped-def]
    url, _ = hook
    env = await jobs_env(notify={**QUICK, "allow_private_webhooks": True})
    await set_prefs(env, "owner", world, webhook_url=url, webhook_secret="k" * 20, max_per_hour=2)
    for n in range(5):
        await edge_alert(env, f"band:wf-b:metric{n}", "active")
    await env.work()
    rows = await env.db.fetch_all("SELECT status, reason FROM notification_deliveries ORDER BY id")
    assert [r["status"] for r in rows] == ["sent", "sent"] + ["suppressed"] * 3
    assert rows[-1]["reason"] == "rate cap (2 an hour)"
    mine = [n for n in await notices(env) if n["user_id"] == world.user_ids["owner"]]
    assert len(mine) == 5  # in-app gets them all


async def test_quiet_hours_hold_warnings_and_drop_them_once_resolved(jobs_env, world, hook) -> None:  # type: ignore[no-untyped-def]
    url, received = hook
    env = await jobs_env(notify={**QUICK, "max_reminders": 0, "allow_private_webhooks": True})
    now = datetime.now(UTC)
    start = (now - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (now + timedelta(hours=1)).time().replace(second=0, microsecond=0)
    await set_prefs(
        env,
        "owner",
        world,
        webhook_url=url,
        webhook_secret="k" * 20,
        quiet_start=start,
        quiet_end=end,
    )
    await edge_alert(env, "band:wf-b:humidity_pct", "active")  # warning: held
    await edge_alert(
        env, "runaway:wf-b-hum", "active", kind="actuator_runaway", severity="critical"
    )  # critical: now
    await env.work()
    rows = await env.db.fetch_all(
        "SELECT d.id, d.status, d.reason, d.not_before, n.severity FROM notification_deliveries d "
        "JOIN notifications n ON n.id = d.notification_id ORDER BY d.id"
    )
    held, urgent = rows
    assert (held["status"], held["reason"], held["severity"]) == (
        "pending",
        "quiet hours",
        "warning",
    )
    assert held["not_before"] > now + timedelta(minutes=50)
    assert urgent["status"] == "sent" and urgent["not_before"] is None
    await edge_alert(env, "band:wf-b:humidity_pct", "resolved")
    await env.work()
    # Morning comes: the held alert is dropped (it ended in the night), and so is its
    # "resolved", since the alert never went out on that channel.
    pending = await env.db.fetch_all(
        "SELECT id FROM notification_deliveries WHERE status = 'pending' ORDER BY id"
    )
    assert len(pending) == 2
    for row in pending:
        outcome = await send_notification(
            env.db, env.settings.notify, row["id"], last_attempt=False
        )
        assert outcome == "skipped"
    assert len(received) == 2  # the critical one (first answer 500, then 204)


async def test_webhooks_to_private_addresses_are_refused(jobs_env, world) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env(notify=QUICK)  # allow_private_webhooks off, as in production
    await set_prefs(
        env, "owner", world, webhook_url="http://127.0.0.1:9/hook", webhook_secret="k" * 20
    )
    await edge_alert(env, "band:wf-b:humidity_pct", "active")
    await env.work()
    (row,) = await env.db.fetch_all(
        "SELECT status, attempts, last_error FROM notification_deliveries"
    )
    assert row["status"] == "failed" and row["attempts"] == 1
    assert "non-public address" in row["last_error"]


async def test_preferences_api_and_unread_count(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    url = "/api/users/me/notification-preferences"
    got = await (await world_client.get(url, headers=auth("viewer"))).json()
    assert got["min_severity"] == "warning" and not got["email_enabled"]
    assert got["effective_email"] == "viewer@example.com" and not got["webhook_secret_set"]
    put = await world_client.put(
        url,
        json={
            "webhook_url": "https://hooks.example.com/x",
            "quiet_start": "22:00",
            "quiet_end": "07:00",
            "timezone": "Europe/Paris",
            "min_severity": "critical",
        },
        headers=auth("viewer"),
    )
    assert put.status == 200, await put.text()
    body = await put.json()
    secret = body["webhook_secret"]
    assert secret and len(secret) >= 32 and body["quiet_start"] == "22:00"
    got = await (await world_client.get(url, headers=auth("viewer"))).json()
    assert got["webhook_secret_set"] and got["webhook_secret"] is None
    again = await (
        await world_client.put(
            url, json={"webhook_url": "https://hooks.example.com/x"}, headers=auth("viewer")
        )
    ).json()
    assert again["webhook_secret"] is None and again["webhook_secret_set"]  # kept, not shown
    rotated = await (
        await world_client.put(
            url,
            json={"webhook_url": "https://hooks.example.com/x", "rotate_webhook_secret": True},
            headers=auth("viewer"),
        )
    ).json()
    assert rotated["webhook_secret"] not in (None, secret)
    for bad in (
        {"timezone": "Mars/Olympus"},
        {"quiet_start": "22:00"},
        {"webhook_url": "ftp://x"},
        {"max_per_hour": 0},
    ):
        resp = await world_client.put(url, json=bad, headers=auth("viewer"))
        assert resp.status == 422, bad
    count = await (
        await world_client.get("/api/notifications/unread-count", headers=auth("viewer"))
    ).json()
    assert count == {"unread": 1}
    await world_client.post("/api/notifications/read-all", headers=auth("viewer"))
    count = await (
        await world_client.get("/api/notifications/unread-count", headers=auth("viewer"))
    ).json()
    assert count == {"unread": 0}


async def test_notify_alert_from_code_and_the_farm_alert_list(  # type: ignore[no-untyped-def]
    jobs_env, world_dsn, tmp_path, auth, aiohttp_client
) -> None:
    env = await jobs_env(notify={**QUICK, "max_reminders": 0})
    await notify_alert(
        env.db,
        farm_id=w.FARM,
        source="cloud",
        key=f"band:{w.ROOM_A}:co2_ppm",
        kind="out_of_band",
        severity="warning",
        message="co2 high",
        state="active",
        room_id=w.ROOM_A,
        queue=env.queue,
    )
    await edge_alert(env, "band:wf-b:humidity_pct", "active")
    await edge_alert(env, "sync_gap", "active", kind="sync_gap", room=None)
    await env.work()
    assert len(await notices(env)) == 5 + ROOM_B_MEMBERS + 5  # room A, room B, farm-wide
    client = await aiohttp_client(init_app(make_settings(world_dsn, tmp_path)))
    url = f"/api/farms/{w.FARM}/alerts?state=active"
    everything = await (await client.get(url, headers=auth("viewer"))).json()
    assert {a["key"] for a in everything["items"]} == {
        f"band:{w.ROOM_A}:co2_ppm",
        "band:wf-b:humidity_pct",
        "sync_gap",
    }
    limited = await (await client.get(url, headers=auth("limited"))).json()
    assert {a["key"] for a in limited["items"]} == {f"band:{w.ROOM_A}:co2_ppm", "sync_gap"}
    stranger = await client.get(url, headers=auth("stranger"))
    assert stranger.status == 404


def test_the_smtp_password_is_masked_in_the_printed_config() -> None:
    from cloud.config import load_settings

    settings = load_settings(notify={"smtp": {"host": "mail", "password": "hunter2"}})
    shown = json.dumps(settings.masked())
    assert "hunter2" not in shown and settings.notify.smtp.enabled
