"""The platform's HTTP: static assets pre-gzipped with strong ETags (revalidated, 304), API JSON
gzipped above a kilobyte, and signing out everywhere."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cloud.middleware import COMPRESS_MIN_BYTES, compress_stream, compression_middleware
from cloud.page import STATIC_DIR, add_page_routes, load_assets
from tests.cloud import world as w

GZIP = {"Accept-Encoding": "gzip, deflate, br"}
PLAIN = {"Accept-Encoding": "identity"}


async def _static_client(aiohttp_client: Any, folder: Path = STATIC_DIR) -> Any:
    app = web.Application(middlewares=[compression_middleware])
    add_page_routes(app, folder)
    return await aiohttp_client(app, auto_decompress=False)


async def test_every_static_file_is_served_gzipped_with_a_strong_etag(aiohttp_client: Any) -> None:
    client = await _static_client(aiohttp_client)
    names = sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file())
    assert {"app.js", "app.css", "index.html", "api.js", "dom.js"} <= set(names)
    for name in names:
        raw = (STATIC_DIR / name).read_bytes()
        resp = await client.get(f"/static/{name}", headers=GZIP)
        assert resp.status == 200, name
        body = await resp.read()
        etag = resp.headers["ETag"]
        assert etag.startswith('"') and not etag.startswith("W/"), (name, etag)
        assert resp.headers["Cache-Control"] == "no-cache"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        if len(raw) > 200:  # a tiny file may not shrink
            assert resp.headers["Content-Encoding"] == "gzip", name
            assert resp.headers["Vary"] == "Accept-Encoding"
            assert gzip.decompress(body) == raw, name
            assert len(body) < len(raw)
            assert int(resp.headers["Content-Length"]) == len(body)
        else:
            assert (gzip.decompress(body) if resp.headers.get("Content-Encoding") else body) == raw

        # Revalidation: the same copy answers 304 with no body, either representation's tag.
        again = await client.get(f"/static/{name}", headers={**GZIP, "If-None-Match": etag})
        assert again.status == 304, name
        assert await again.read() == b""
        assert again.headers["ETag"] == etag

        # A client that takes no gzip gets the file as it is, under another tag.
        plain = await client.get(f"/static/{name}", headers=PLAIN)
        assert plain.status == 200 and "Content-Encoding" not in plain.headers
        assert await plain.read() == raw
        same = await client.get(f"/static/{name}", headers={**PLAIN, "If-None-Match": etag})
        assert same.status == 304
    # The content type of each kind; the page itself revalidates too.
    js = await client.get("/static/app.js", headers=PLAIN)
    assert js.headers["Content-Type"] == "text/javascript; charset=utf-8"
    css = await client.get("/static/app.css", headers=PLAIN)
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    page = await client.get("/", headers=GZIP)
    assert page.status == 200 and page.headers["Content-Encoding"] == "gzip"
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert (await client.get("/", headers={"If-None-Match": page.headers["ETag"]})).status == 304


async def test_a_changed_file_gets_a_new_etag_and_new_files_are_served(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>x</title>")
    (tmp_path / "view-new.js").write_text("export const a = 1;\n" * 100)
    (tmp_path / "icons").mkdir()
    (tmp_path / "icons" / "leaf.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / ".hidden").write_text("secret")
    first = load_assets(tmp_path)
    assert set(first) == {"index.html", "view-new.js", "icons/leaf.svg"}
    (tmp_path / "view-new.js").write_text("export const a = 2;\n" * 100)
    second = load_assets(tmp_path)
    assert first["view-new.js"].etag != second["view-new.js"].etag
    digest = hashlib.sha256((tmp_path / "view-new.js").read_bytes()).hexdigest()
    assert second["view-new.js"].etag == f'"{digest[:32]}"'

    client = await _static_client(aiohttp_client, tmp_path)
    resp = await client.get("/static/icons/leaf.svg", headers=PLAIN)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("image/svg+xml")
    stale = await client.get("/static/view-new.js",
                             headers={**GZIP, "If-None-Match": first["view-new.js"].etag})
    assert stale.status == 200  # the browser's old copy is replaced
    for missing in ("/static/.hidden", "/static/nope.js", "/static/../page.py",
                    "/static/%2e%2e/page.py"):
        assert (await client.get(missing)).status == 404, missing


async def test_accept_encoding_is_honoured(aiohttp_client: Any) -> None:
    client = await _static_client(aiohttp_client)
    for header, gzipped in [("gzip", True), ("GZIP;q=0.5", True), ("gzip;q=0", False),
                            ("*", True), ("br", False), ("identity;q=1, *;q=0", False),
                            ("gzip;q=0, *", False), ("", False)]:
        resp = await client.get("/static/app.js", headers={"Accept-Encoding": header})
        assert (resp.headers.get("Content-Encoding") == "gzip") is gzipped, header


async def test_head_answers_headers_only(aiohttp_client: Any) -> None:
    client = await _static_client(aiohttp_client)
    resp = await client.head("/static/app.js", headers=GZIP)
    assert resp.status == 200 and resp.headers["ETag"]
    assert await resp.read() == b""


def _compression_app() -> web.Application:
    async def big(request: web.Request) -> web.Response:
        return web.json_response({"values": list(range(2000))})

    async def small(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def parquet(request: web.Request) -> web.Response:
        return web.Response(body=b"PAR1" + bytes(4000),
                            content_type="application/vnd.apache.parquet")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/csv"})
        compress_stream(request, response)
        await response.prepare(request)
        for i in range(500):
            await response.write(f"2026-12-06T14:05:00Z,room-a-sensor,temperature_c,{i}\n".encode())
        await response.write_eof()
        return response

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str("x" * 5000)
        await sock.close()
        return sock

    app = web.Application(middlewares=[compression_middleware])
    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    app.router.add_get("/parquet", parquet)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", ws)
    return app


async def test_json_above_a_kilobyte_is_gzipped_and_the_rest_left_alone(
    aiohttp_client: Any,
) -> None:
    client = await aiohttp_client(_compression_app(), auto_decompress=False)
    resp = await client.get("/big", headers=GZIP)
    body = await resp.read()
    assert resp.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in resp.headers["Vary"]
    assert json.loads(gzip.decompress(body)) == {"values": list(range(2000))}
    assert len(body) < len(json.dumps({"values": list(range(2000))})) / 2

    plain = await client.get("/big", headers=PLAIN)
    assert "Content-Encoding" not in plain.headers and "Accept-Encoding" in plain.headers["Vary"]
    assert json.loads(await plain.read())["values"][-1] == 1999

    small = await client.get("/small", headers=GZIP)
    assert "Content-Encoding" not in small.headers
    assert len(await small.read()) < COMPRESS_MIN_BYTES

    parquet = await client.get("/parquet", headers=GZIP)
    assert "Content-Encoding" not in parquet.headers
    assert (await parquet.read()).startswith(b"PAR1")

    stream = await client.get("/stream", headers=GZIP)
    assert stream.headers["Content-Encoding"] == "gzip"
    lines = gzip.decompress(await stream.read()).decode().splitlines()
    assert len(lines) == 500 and lines[-1].endswith(",499")

    async with client.ws_connect("/ws", headers=GZIP) as sock:
        assert await sock.receive_str() == "x" * 5000


@pytest.mark.postgres
async def test_api_json_is_gzipped_end_to_end(aiohttp_client: Any, world_dsn: str,
                                              tmp_path: Path, auth: Any) -> None:
    from cloud.app import init_app
    from tests.cloud.conftest import make_settings

    client = await aiohttp_client(init_app(make_settings(world_dsn, tmp_path)),
                                  auto_decompress=False)
    resp = await client.get("/api/vocabulary", headers={**auth("viewer"), **GZIP})
    assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Cache-Control"] == "no-store"
    vocabulary = json.loads(gzip.decompress(await resp.read()))
    assert vocabulary["metrics"]
    # An error (problem+json) stays readable either way; the static page through the real app.
    bad = await client.get("/api/vocabulary", headers=GZIP)
    assert bad.status == 401 and bad.content_type == "application/problem+json"
    page = await client.get("/static/app.js", headers=GZIP)
    assert page.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await page.read()) == (STATIC_DIR / "app.js").read_bytes()


@pytest.mark.postgres
async def test_sign_out_everywhere_revokes_every_session(world_client: Any) -> None:
    async def login() -> dict[str, Any]:
        resp = await world_client.post(
            "/api/auth/login", json={"email": "operator@example.com", "password": w.PASSWORD})
        assert resp.status == 200
        tokens: dict[str, Any] = await resp.json()
        return tokens

    phone, laptop, tablet = await login(), await login(), await login()
    other = await (await world_client.post(
        "/api/auth/login", json={"email": "viewer@example.com", "password": w.PASSWORD})).json()
    # One session was refreshed (rotated) before: its new token is the live one.
    resp = await world_client.post("/api/auth/refresh",
                                   json={"refresh_token": tablet["refresh_token"]})
    tablet = await resp.json()

    # Without a bearer token: 401, nothing revoked.
    assert (await world_client.post("/api/auth/logout-all")).status == 401

    resp = await world_client.post(
        "/api/auth/logout-all", headers={"Authorization": f"Bearer {laptop['access_token']}"})
    assert resp.status == 200
    assert await resp.json() == {"signed_out": 3}
    for session in (phone, laptop, tablet):
        again = await world_client.post("/api/auth/refresh",
                                        json={"refresh_token": session["refresh_token"]})
        assert again.status == 401
    # Their access tokens stop working now, not when they expire; another user's don't.
    for session in (phone, laptop, tablet):
        me = await world_client.get(
            "/api/users/me", headers={"Authorization": f"Bearer {session['access_token']}"})
        assert me.status == 401
        assert "signed out everywhere" in (await me.json())["detail"]
    me = await world_client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {other['access_token']}"})
    assert me.status == 200
    # Another user's session is untouched.
    resp = await world_client.post("/api/auth/refresh",
                                   json={"refresh_token": other["refresh_token"]})
    assert resp.status == 200
    # Signing in again works, and a second sign-out-everywhere finds only that session.
    fresh = await login()
    fresh_auth = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert (await world_client.get("/api/users/me", headers=fresh_auth)).status == 200
    resp = await world_client.post(
        "/api/auth/logout-all", headers={"Authorization": f"Bearer {fresh['access_token']}"})
    assert await resp.json() == {"signed_out": 1}
    assert (await world_client.get("/api/users/me", headers=fresh_auth)).status == 401
