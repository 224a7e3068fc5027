"""Abuse and robustness (issue 11), over real HTTP against real PostgreSQL: unauthenticated
requests cannot flood or forge the log, a login attacker cannot lock a user out, notification
targets are validated and their failures shown to the user, and SIGTERM is not held up by open
edge streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cloud.app import init_app
from tests.cloud import world as w
from tests.cloud.conftest import JWT_SECRET, auth_settings, make_settings
from tests.cloud.jobs_env import jobs_env_fixture  # noqa: F401
from tests.cloud.test_edge_sync import EDGE, batch, problem, reading, upload
from tests.cloud.test_notifications import QUICK, edge_alert, set_prefs

pytestmark = pytest.mark.postgres

PROBLEM = "application/problem+json"

# ---- 1. unauthenticated requests: AWS IoT destination confirmations, bad edge tokens -----------

CONFIRM = {
    "x-amz-rules-engine-message-type": "DestinationConfirmation",
    "Content-Type": "application/json",
}
ARN = "arn:aws:iot:eu-west-1:123456789012:ruledestination/http/7a280e37-b9c6-47a2-a751-0703693f46e4"


def confirmation(token: str, *, url: str | None = None, arn: str = ARN) -> bytes:
    enable = url if url is not None else f"https://iot.eu-west-1.amazonaws.com/confirmdestination/{token}"
    return json.dumps({"arn": arn, "confirmationToken": token, "enableUrl": enable,
                       "messageType": "DestinationConfirmation"}).encode()


def cloud_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("cloud")]


async def test_confirmation_values_of_the_wrong_shape_are_refused_naming_the_field(  # type: ignore[no-untyped-def]
    world_client, caplog
) -> None:
    caplog.set_level(logging.DEBUG, logger="cloud")
    token = "AYADeMXLrPrNY2wqJAKsFNn-NBJndA"
    forged = token + "\n2024-01-01 00:00:00 CRITICAL cloud.auth: admin password reset"
    cases = [
        (confirmation(forged), "body.confirmationToken"),
        (confirmation("x" * 5000), "body.confirmationToken"),
        (confirmation(token, url=f"https://evil.example/confirmdestination/{token}"),
         "body.enableUrl"),
        (confirmation(token, url="https://iot.eu-west-1.amazonaws.com/confirmdestination/other"
                                 "TokenThanTheBodys"), "body.enableUrl"),
        (confirmation(token, arn="arn:aws:iot:eu-west-1:1:thing/\nforged"), "body.arn"),
    ]
    for path in ("/api/edge/v1/batches", "/api/edge/v1/batches/"):
        for body, field in cases:
            found = await problem(await world_client.post(path, data=body, headers=CONFIRM), 422)
            assert found["errors"][0]["field"] == field, (body[:80], found)
    resp = await world_client.post(
        "/api/edge/v1/batches/?confirmationToken=" + "%0Aforged" * 3, data=b"", headers=CONFIRM
    )
    assert (await problem(resp, 422))["errors"][0]["field"] == "query.confirmationToken"
    assert not [m for m in cloud_log(caplog) if "forged" in m or "evil" in m]
    # The real shape is still logged for the operator, on one line.
    resp = await world_client.post("/api/edge/v1/batches", data=confirmation(token),
                                   headers=CONFIRM)
    assert resp.status == 200, await resp.text()
    (line,) = [m for m in cloud_log(caplog) if token in m]
    assert "\n" not in line and ARN in line


async def test_a_flood_of_confirmations_is_rate_limited_and_the_log_stays_bounded(  # type: ignore[no-untyped-def]
    world_client, caplog
) -> None:
    caplog.set_level(logging.DEBUG, logger="cloud")
    statuses: dict[int, int] = {}
    for n in range(2000):
        token = f"AYADeMXLrPrNY2wqJAKsFNn{n:08d}" + "x" * 40
        if n % 2:  # every other one tries to forge a log line
            token += "\nCRITICAL cloud.auth: forged"
        path = "/api/edge/v1/batches" if n % 3 else "/api/edge/v1/batches/"
        resp = await world_client.post(path, data=confirmation(token), headers=CONFIRM)
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        if resp.status == 429:
            assert resp.content_type == PROBLEM and int(resp.headers["Retry-After"]) >= 1
        else:
            await resp.read()
    assert statuses.get(429, 0) >= 1900, statuses
    assert set(statuses) <= {200, 422, 429}, statuses
    logged = cloud_log(caplog)
    assert sum(len(m) for m in logged) < 16_000, (len(logged), logged[:3])
    assert not [m for m in logged if "\n" in m or "forged" in m]


async def test_failed_edge_tokens_are_rate_limited_and_the_real_edge_is_not(  # type: ignore[no-untyped-def]
    world_client,
) -> None:
    statuses = []
    for _ in range(200):
        resp = await world_client.post("/api/edge/v1/batches", json=batch([reading(1)]),
                                       headers={"Authorization": "Bearer guessed"})
        statuses.append(resp.status)
        if resp.status == 429:
            assert resp.content_type == PROBLEM and int(resp.headers["Retry-After"]) >= 1
        await resp.read()
        resp = await world_client.get("/api/edge/v1/pending",
                                      headers={"Authorization": "Bearer guessed"})
        statuses.append(resp.status)
        await resp.read()
    assert statuses.count(429) >= 300 and set(statuses) == {401, 429}
    # The edge whose token is right is answered as ever, from the same address.
    resp = await upload(world_client, batch([reading(1)]), headers=EDGE)
    assert resp.status == 200, await resp.text()


async def test_guessed_refresh_tokens_are_rate_limited(world_client) -> None:  # type: ignore[no-untyped-def]
    statuses = []
    for n in range(60):
        resp = await world_client.post("/api/auth/refresh",
                                       json={"refresh_token": f"sfr_guess{n:020d}"})
        statuses.append(resp.status)
        if resp.status == 429:
            assert resp.content_type == PROBLEM and "Retry-After" in resp.headers
        await resp.read()
    assert statuses[0] == 401 and statuses.count(429) >= 20, statuses


def test_the_token_bucket_lets_a_burst_through_then_refills() -> None:
    from cloud.auth.ratelimit import TokenBucket
    from cloud.errors import RateLimited

    bucket = TokenBucket(2, 0.5)  # 2 at once, then one every 2 s
    bucket.take("a", now=0)
    bucket.take("a", now=0)
    with pytest.raises(RateLimited) as refused:
        bucket.take("a", now=0.5)
    assert refused.value.headers["Retry-After"] == "2"  # 0.75 of a token short at 0.5 / s
    bucket.take("b", now=0.5)  # another address has its own bucket
    bucket.take("a", now=2.1)
    with pytest.raises(RateLimited):
        bucket.take("a", now=2.2)


# ---- 2. login: throttled per account and address, never a lock-out -------------------------------


async def _login(client, email: str, password: str, address: str):  # type: ignore[no-untyped-def]
    return await client.post(
        "/api/auth/login",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": address},
    )


@pytest.fixture
async def login_client(aiohttp_client, world_dsn, tmp_path):  # type: ignore[no-untyped-def]
    """An app behind a trusted proxy (the client address is X-Forwarded-For's)."""
    settings = make_settings(
        world_dsn, tmp_path, trust_forwarded_for=True, auth=auth_settings(login_per_account=3)
    )
    return await aiohttp_client(init_app(settings))


async def test_an_attacker_cannot_lock_the_owner_out(login_client) -> None:  # type: ignore[no-untyped-def]
    owner = "owner@example.com"
    for _ in range(3):
        assert (await _login(login_client, owner, "guess", "203.0.113.66")).status == 401
    # The attacker's address now waits before each further guess (even a right one)…
    for password in ("guess", w.PASSWORD):
        resp = await _login(login_client, owner, password, "203.0.113.66")
        assert resp.status == 429 and resp.content_type == PROBLEM
        assert int(resp.headers["Retry-After"]) >= 1
    # … while the owner, from their own address, gets in at once with the right password.
    resp = await _login(login_client, owner, w.PASSWORD, "198.51.100.7")
    assert resp.status == 200, await resp.text()
    # Wrong guesses from the owner's address do not carry over to the attacker's count either.
    assert (await _login(login_client, owner, "typo", "198.51.100.7")).status == 401
    assert (await _login(login_client, owner, w.PASSWORD, "198.51.100.7")).status == 200


async def test_one_address_guessing_many_accounts_is_throttled(login_client) -> None:  # type: ignore[no-untyped-def]
    statuses = [
        (await _login(login_client, f"user{n}@example.com", "guess", "203.0.113.99")).status
        for n in range(30)
    ]
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    # Others are not affected.
    resp = await _login(login_client, "viewer@example.com", w.PASSWORD, "198.51.100.8")
    assert resp.status == 200


def test_the_login_delay_doubles_per_failure_and_a_success_clears_it() -> None:
    from cloud.auth.ratelimit import LoginThrottle
    from cloud.errors import RateLimited

    throttle = LoginThrottle(free=2, max_delay_s=8, forget_s=3600)
    key = ("owner@example.com", "203.0.113.66")
    now = 0.0
    for _ in range(2):  # the free failures: no wait
        throttle.check(key, now=now)
        throttle.fail(key, now=now)
    waits = []
    for _ in range(6):
        with pytest.raises(RateLimited) as refused:
            throttle.check(key, now=now)
        waits.append(refused.value.retry_after_s)
        now += refused.value.retry_after_s
        throttle.check(key, now=now)  # the wait is over: one more try
        throttle.fail(key, now=now)
    assert waits == [1, 2, 4, 8, 8, 8]
    throttle.check(("owner@example.com", "198.51.100.7"), now=now)  # another address: at once
    throttle.reset(key)
    throttle.check(key, now=now)
    throttle.fail(key, now=now)
    throttle.fail(key, now=now)
    throttle.check(key, now=now + 3600)  # forgotten after forget_s without a failure


# ---- 3. notification targets: validated at the API, failures bounded and shown to the user -------

PREFS = "/api/users/me/notification-preferences"


async def test_webhook_urls_are_validated_naming_the_field(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    for url in (
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com:0/x",
        "https://hooks.example.com:80a/x",
        "http://user:secret@hooks.example.com/x",
        "https://:443/x",
        "https:///x",
        "ftp://hooks.example.com/x",
        "https://hooks.example.com/" + "x" * 2100,
        "https://hooks.example.com/a\nb",
        "https://hooks.example.com/a\x7fb",
    ):
        resp = await world_client.put(PREFS, json={"webhook_url": url}, headers=auth("viewer"))
        found = await problem(resp, 422)
        assert found["errors"][0]["field"] == "body.webhook_url", (url, found)
    for url in (
        "https://hooks.example.com",
        "https://hooks.example.com:8443/x?y=1",
        "http://[2001:db8::1]:8080/hook",
    ):
        resp = await world_client.put(PREFS, json={"webhook_url": url}, headers=auth("viewer"))
        assert resp.status == 200, (url, await resp.text())


@pytest.fixture
async def failing_hook(aiohttp_server):  # type: ignore[no-untyped-def]
    """A webhook receiver that always answers 500."""
    received: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook")), received


async def _health(client, headers) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = await client.get(PREFS, headers=headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["webhook_health"]  # type: ignore[no-any-return]


async def _failure_notices(client, headers) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    resp = await client.get("/api/notifications", headers=headers)
    assert resp.status == 200, await resp.text()
    return [n for n in (await resp.json())["items"] if n["kind"] == "delivery_failed"]


@pytest.mark.parametrize("target", ["refused", "500"])
async def test_a_failing_webhook_is_retried_a_bounded_number_of_times_and_the_user_sees_it(  # type: ignore[no-untyped-def]
    target, jobs_env, world_client, auth, port, failing_hook
) -> None:
    url, received = failing_hook
    if target == "refused":
        url = f"http://127.0.0.1:{port}/hook"  # nothing listens there
    env = await jobs_env(notify={**QUICK, "allow_private_webhooks": True})
    owner = auth("owner")
    resp = await world_client.put(PREFS, json={"webhook_url": url}, headers=owner)
    assert resp.status == 200, await resp.text()
    assert (await _health(world_client, owner))["failures"] == 0
    await edge_alert(env, "band:wf-b:humidity_pct", "active")
    await env.work()
    attempts = env.settings.jobs.max_attempts
    (row,) = await env.db.fetch_all("SELECT status, attempts FROM notification_deliveries")
    assert row == {"status": "failed", "attempts": attempts}
    assert len(received) == (attempts if target == "500" else 0)
    assert not await env.jobs("send_notification", "todo")
    health = await _health(world_client, owner)
    assert health["failures"] == 1 and health["last_error_at"] is not None
    assert ("unreachable" if target == "refused" else "answered 500") in health["last_error"]
    (notice,) = await _failure_notices(world_client, owner)
    assert "webhook" in notice["title"].lower()
    # The next failure counts, but the user is told once, not once per alert.
    await edge_alert(env, "band:wf-b:co2_ppm", "active")
    await env.work()
    assert (await _health(world_client, owner))["failures"] == 2
    assert len(await _failure_notices(world_client, owner)) == 1
    # A new URL starts afresh.
    resp = await world_client.put(PREFS, json={"webhook_url": url + "2"}, headers=owner)
    assert (await resp.json())["webhook_health"]["failures"] == 0


async def test_a_stored_url_with_a_bad_port_fails_once_not_forever(  # type: ignore[no-untyped-def]
    jobs_env, world, world_client, auth
) -> None:
    env = await jobs_env(notify=QUICK)  # as in production: private targets refused
    # Stored before the API validated URLs.
    await set_prefs(env, "owner", world, webhook_url="https://hooks.example.com:99999/x",
                    webhook_secret="k" * 20)
    await edge_alert(env, "band:wf-b:humidity_pct", "active")
    await env.work()
    (row,) = await env.db.fetch_all(
        "SELECT status, attempts, last_error FROM notification_deliveries"
    )
    assert row["status"] == "failed" and row["attempts"] == 1, row
    assert "port" in row["last_error"]
    assert not await env.jobs("send_notification", "failed")  # the job itself did its work
    health = await _health(world_client, auth("owner"))
    assert health["failures"] == 1 and "port" in health["last_error"]


# ---- 4. SIGTERM: open edge streams and dashboard sockets do not hold the process up ------------

REPO = Path(__file__).resolve().parents[2]


def spawn_cloud(dsn: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """``smartfarm cloud serve`` as a real process (as tests/chaos's Cloud.spawn does)."""
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "SMARTFARM_CLOUD_PORT": str(port),
        "SMARTFARM_CLOUD_HOST": "127.0.0.1",
        "SMARTFARM_CLOUD_DATA_DIR": str(data_dir),
        "SMARTFARM_CLOUD_MIGRATE_ON_START": "false",
        "SMARTFARM_CLOUD_LOG_LEVEL": "WARNING",
        "SMARTFARM_CLOUD_AUTH__JWT_SECRET": JWT_SECRET,
        "SMARTFARM_CLOUD_JOBS__PERIODIC": "false",
        "SMARTFARM_CLOUD_DATABASE__POOL_MAX": "4",
    }
    with (data_dir / "cloud.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "smartfarm_cli", "cloud", "serve"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )


async def _metric(session: aiohttp.ClientSession, base: str, name: str) -> float | None:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        async with session.get(base + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    return None


async def _until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout:g} s"
        await asyncio.sleep(0.1)


async def _close_of(sock: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The message that ends ``sock`` (what came before it is skipped)."""
    while True:
        msg = await sock.receive(timeout=5)
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return msg


@pytest.mark.timeout(90)
async def test_sigterm_stops_the_cloud_within_5_s_while_an_edge_holds_its_stream(  # type: ignore[no-untyped-def]
    world_dsn, world, tokens, tmp_path, port
) -> None:
    proc = spawn_cloud(world_dsn, tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async def up() -> bool:
                return await _metric(session, base, "smartfarm_sync_streams") is not None

            await _until(up, "the cloud", 30)
            edge = await session.ws_connect(base + "/api/edge/v1/stream", headers=EDGE)
            await edge.send_json({"type": "hello", "edge_id": w.EDGE, "config_version": 0,
                                  "acked_seq": 0})
            user = tokens.issue(world.user_ids["owner"], ttl_s=600)
            dashboard = await session.ws_connect(f"{base}/api/ws?token={user}")

            async def streaming() -> bool:
                return await _metric(session, base, "smartfarm_sync_streams") == 1

            await _until(streaming, "the edge stream", 10)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 60)
            took = time.monotonic() - started
            # The edge hears "going away" (and reconnects, to another instance if there is one).
            closed = [await _close_of(sock) for sock in (edge, dashboard)]
        log = (tmp_path / "cloud.log").read_text(errors="replace")
        assert took < 5, f"SIGTERM took {took:.1f} s\n{log[-3000:]}"
        assert code == 0, log[-3000:]
        for msg in closed:
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        assert closed[0].data in (1001, None), closed[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
