"""The app's cross-cutting behaviour: problem+json errors, security headers, health, metrics,
the OpenAPI document and Swagger UI."""

from __future__ import annotations

import psycopg
import pytest

from cloud.app import init_app
from tests.cloud.conftest import make_settings
from tests.cloud.world import FARM

pytestmark = pytest.mark.postgres
PROBLEM = "application/problem+json"


async def test_health_reports_database_and_version(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["database"] == "ok" and body["status"] == "ok" and body["version"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_health_counts_registered_and_connected_edges(world_client, world_dsn) -> None:  # type: ignore[no-untyped-def]
    body = await (await world_client.get("/health")).json()
    assert body["edges"] == {"registered": 1, "connected": 0, "window_s": 120}
    assert body["jobs"] == "ok" and body["job_queue"]["failed_24h"] == 0
    with psycopg.connect(world_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO edges (id, farm_id, token_hash, last_seen) VALUES"
            " ('recent', %s, 'x', now() - interval '30 seconds'),"
            " ('stale', %s, 'y', now() - interval '1 hour')",
            (FARM, FARM),
        )
    body = await (await world_client.get("/health")).json()
    assert body["edges"]["registered"] == 3 and body["edges"]["connected"] == 1
    assert body["status"] == "ok"


async def test_health_is_503_when_the_database_goes_away(client, databases, db_dsn) -> None:  # type: ignore[no-untyped-def]
    name = db_dsn.rsplit("dbname=", 1)[-1].split()[0]
    databases.drop(name)  # WITH (FORCE) kills the pool's connections
    resp = await client.get("/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["database"] == "down" and body["status"] == "degraded"
    assert body["edges"] is None


async def test_unknown_path_and_method_are_problems(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/api/nope")
    assert resp.status == 404 and resp.content_type == PROBLEM
    body = await resp.json()
    assert body["status"] == 404 and body["type"] == "/problems/not-found"
    resp = await client.put("/api/farms")
    assert resp.status == 405 and resp.content_type == PROBLEM
    assert "Allow" in resp.headers


async def test_missing_token_is_401_problem(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/api/farms")
    assert resp.status == 401 and resp.content_type == PROBLEM
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.get("/api/farms", headers={"Authorization": "Bearer not-a-jwt"})
    assert resp.status == 401


async def test_validation_errors_list_fields(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.post(
        f"/api/farms/{FARM}/rooms",
        json={"species": "truffle", "stage": "fruiting", "bogus": 1},
        headers=auth("owner"),
    )
    assert resp.status == 422 and resp.content_type == PROBLEM
    fields = {e["field"] for e in (await resp.json())["errors"]}
    assert fields == {"body.species", "body.bogus"}


async def test_malformed_json_wrong_type_and_oversize_bodies(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/farms/{FARM}/rooms"
    headers = {**auth("owner"), "Content-Type": "application/json"}
    resp = await world_client.post(url, data=b"{not json", headers=headers)
    assert resp.status == 400 and resp.content_type == PROBLEM
    resp = await world_client.post(url, data=b"[1, 2]", headers=headers)
    assert resp.status == 422
    resp = await world_client.post(
        url, data=b"a=b", headers={**auth("owner"), "Content-Type": "text/plain"}
    )
    assert resp.status == 415
    big = b'{"name": "' + b"x" * 2_000_000 + b'"}'
    resp = await world_client.post(url, data=big, headers=headers)
    assert resp.status == 413 and resp.content_type == PROBLEM


async def test_bad_ids_and_cursors_are_not_500(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.get("/api/rooms/..%2F..%2Fetc", headers=auth("owner"))
    assert resp.status == 404
    resp = await world_client.get("/api/farms?cursor=%%%", headers=auth("owner"))
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "query.cursor"
    resp = await world_client.get("/api/farms?limit=0", headers=auth("owner"))
    assert resp.status == 422


async def test_unexpected_errors_are_500_with_an_id_and_no_trace(
    world_client, auth, monkeypatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    from cloud.db import farms

    async def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(farms, "get", broken)
    resp = await world_client.get(f"/api/farms/{FARM}", headers=auth("owner"))
    assert resp.status == 500 and resp.content_type == PROBLEM
    body = await resp.json()
    assert "secret" not in await resp.text() and "Traceback" not in await resp.text()
    assert body["error_id"] in caplog.text


async def test_metrics_exposes_latency_and_pool(client) -> None:  # type: ignore[no-untyped-def]
    await client.get("/health")
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    lines = [x for x in text.splitlines() if x.startswith("smartfarm_http_request_duration")]
    assert any('route="/health"' in line and 'status="200"' in line for line in lines)
    assert "smartfarm_db_pool_size" in text


async def test_openapi_document_covers_every_route(client) -> None:  # type: ignore[no-untyped-def]
    from cloud.api import all_routes

    resp = await client.get("/apispec.json")
    spec = await resp.json()
    assert spec["openapi"].startswith("3.1")
    for route in all_routes():
        op = spec["paths"][route.path][route.method.lower()]
        assert str(route.status) in op["responses"]
        if route.scope != "public":
            assert op["security"] == [{"bearerAuth": []}]
            assert "401" in op["responses"]
    telemetry = spec["paths"]["/api/rooms/{room_id}/telemetry"]["get"]
    names = {p["name"] for p in telemetry["parameters"]}
    assert {"from", "to", "metric", "device_id", "bucket", "agg", "cursor", "room_id"} <= names
    assert "text/csv" in telemetry["responses"]["200"]["content"]


async def test_swagger_ui_is_served_locally(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/docs/")
    html = await resp.text()
    assert resp.status == 200 and "/docs/static/swagger-ui-bundle.js" in html
    assert "http" not in html.replace("http-equiv", "")  # no CDN
    resp = await client.get("/docs/static/swagger-ui-bundle.js")
    assert resp.status == 200 and len(await resp.read()) > 100_000
    resp = await client.get("/docs/init.js")
    assert "/apispec.json" in await resp.text()


async def test_cors_is_off_by_default_and_configurable(aiohttp_client, db_dsn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    plain = await aiohttp_client(init_app(make_settings(db_dsn, tmp_path)))
    resp = await plain.get("/health", headers={"Origin": "https://dash.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    cors = await aiohttp_client(
        init_app(make_settings(db_dsn, tmp_path, cors_origins=["https://dash.example"]))
    )
    resp = await cors.get("/health", headers={"Origin": "https://dash.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://dash.example"
