"""deploy/nginx/smartfarm.conf under Debian's nginx: `nginx -t` accepts it, its paths and limits
match the cloud's routes and settings, and a real nginx in front of two real cloud instances
(real PostgreSQL) redirects HTTP to HTTPS, terminates TLS, spreads requests over both, upgrades
both WebSockets and enforces the body limit of each path.

The test copy of the file changes addresses only: upstreams on the instances' loopback ports,
listeners on free loopback ports (nginx binds them even for `-t`), the certificate in a temp dir.
No nginx: skip with the reason, or fail when SMARTFARM_REQUIRE_DEPLOY_TOOLS=1 (CI).
"""

from __future__ import annotations

import gzip
import os
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bench.nginx_site import NginxSite, make_site, nginx_binary, run_nginx
from tests.conftest import free_port
from tests.deploy.test_containers import NGINX_CONF, compose_yaml, get_routes, need

WS_PATHS = ("/api/edge/v1/stream", "/api/ws")
BATCHES = "/api/edge/v1/batches"


@pytest.fixture(scope="module")
def nginx() -> str:
    binary = nginx_binary()
    need(binary, "nginx not installed (apt-get install nginx; .ci/run does)")
    assert binary is not None
    return binary


def conf_text() -> str:
    return NGINX_CONF.read_text()


def locations() -> dict[str, str]:
    """`location = PATH { … }` bodies by path."""
    return dict(re.findall(r"location = (\S+) \{(.*?)\n    \}", conf_text(), re.DOTALL))


# ---- the file against the app --------------------------------------------------------------------

def test_conf_paths_and_upstreams_match_the_cloud(tmp_path: Path) -> None:
    from cloud.app import init_app
    from tests.cloud.conftest import make_settings

    app = init_app(make_settings("postgresql://nobody@127.0.0.1:1/none", tmp_path))
    assert set(locations()) == {BATCHES, *WS_PATHS, "/metrics"}
    assert "deny all;" in locations()["/metrics"] and "/metrics" in get_routes(app)
    posts = {r.resource.canonical for r in app.router.routes()
             if r.method == "POST" and r.resource is not None}
    assert BATCHES in posts
    assert set(WS_PATHS) <= get_routes(app)
    serving = {name for name, svc in compose_yaml()["services"].items()
               if svc.get("command", [])[:2] == ["cloud", "serve"]}
    upstream = set(re.findall(r"server (cloud-\d+):8000", conf_text()))
    assert upstream == serving == {"cloud-1", "cloud-2"}


def test_conf_limits_and_headers_match_the_cloud_settings() -> None:
    from cloud.config import CloudSettings
    from cloud.live.settings import LiveConfig
    from cloud.middleware import SECURITY_HEADERS
    from cloud.sync.settings import SyncConfig
    from edge.config import CloudConfig

    server_wide = re.search(r"\n    client_max_body_size (\d+)m;", conf_text())
    assert server_wide and int(server_wide.group(1)) * 2**20 == CloudSettings.model_fields[
        "max_body_bytes"].default
    batch_limit = re.search(r"client_max_body_size (\d+)m;", locations()[BATCHES])
    assert batch_limit and int(batch_limit.group(1)) * 2**20 == SyncConfig().max_batch_bytes
    heartbeat = max(SyncConfig().heartbeat_s, LiveConfig().heartbeat_s,
                    CloudConfig().ws_heartbeat_s)
    for path in WS_PATHS:
        timeout = re.search(r"proxy_read_timeout (\d+)s;", locations()[path])
        assert timeout and int(timeout.group(1)) > 10 * heartbeat
    added = dict(re.findall(r'add_header (\S+) "([^"]*)" always;', conf_text()))
    hidden = set(re.findall(r"proxy_hide_header (\S+);", conf_text()))
    assert added and set(added) == hidden
    assert "Content-Security-Policy" not in added  # the app's: it differs per page
    for name, value in added.items():
        assert SECURITY_HEADERS[name] == value, name


def test_nginx_accepts_the_conf(nginx: str, tmp_path: Path) -> None:
    site = make_site(tmp_path, [free_port(), free_port()])
    result = subprocess.run([nginx, "-t", *site.nginx_args()], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# ---- a real nginx in front of two real clouds ----------------------------------------------------

@dataclass
class Cloud:
    port: int
    hits: int = 0
    forwarded: list[tuple[str | None, str | None]] = field(default_factory=list)


@pytest.fixture
async def clouds(aiohttp_server, db_dsn: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from cloud.app import init_app
    from cloud.db.database import Database
    from tests.cloud.conftest import make_settings
    from tests.cloud.world import build_world

    db = await Database.connect(db_dsn, min_size=1, max_size=1)
    try:
        world = await build_world(db)
    finally:
        await db.close()
    instances = []
    for index in (1, 2):
        app = init_app(make_settings(db_dsn, tmp_path / f"cloud-{index}",
                                     trust_forwarded_for=True))
        cloud = Cloud(port=0)

        async def seen(request: web.Request, _: web.StreamResponse, cloud: Cloud = cloud) -> None:
            cloud.hits += 1
            cloud.forwarded.append((request.headers.get("X-Forwarded-For"),
                                    request.headers.get("X-Forwarded-Proto")))

        app.on_response_prepare.append(seen)
        cloud.port = (await aiohttp_server(app)).port
        instances.append(cloud)
    return world, instances


@pytest.fixture
async def proxy(nginx: str, clouds, tmp_path: Path) -> AsyncIterator[NginxSite]:  # type: ignore[no-untyped-def]
    folder = tmp_path / "nginx"
    folder.mkdir()
    site = make_site(folder, [c.port for c in clouds[1]])
    with run_nginx(site, nginx):  # one foreground process: no worker switching users
        yield site


async def test_nginx_fronts_two_cloud_instances(clouds, proxy: NginxSite) -> None:  # type: ignore[no-untyped-def]
    from cloud.middleware import SECURITY_HEADERS
    from tests.cloud.conftest import JWT_SECRET
    from tests.cloud.world import tokens_for

    world, instances = clouds
    tls = ssl.create_default_context(cafile=str(proxy.folder / "fullchain.pem"))
    base = f"https://127.0.0.1:{proxy.https_port}"
    async with aiohttp.ClientSession() as http:
        plain = await http.get(f"http://127.0.0.1:{proxy.http_port}/api/farms?limit=5",
                               allow_redirects=False)
        assert plain.status == 301
        assert plain.headers["Location"] == "https://127.0.0.1/api/farms?limit=5"

        for _ in range(6):
            # A client-supplied X-Forwarded-For must not reach the cloud's per-IP limits.
            health = await http.get(base + "/health", ssl=tls,
                                    headers={"X-Forwarded-For": "203.0.113.9"})
            assert health.status == 200 and (await health.json())["database"] == "ok"
        assert all(cloud.hits > 0 for cloud in instances), [c.hits for c in instances]
        seen = {pair for cloud in instances for pair in cloud.forwarded}
        assert seen == {("127.0.0.1", "https")}
        for name, value in SECURITY_HEADERS.items():
            expected = 1 if name == "Content-Security-Policy" else [value]
            got = health.headers.getall(name, [])
            assert (len(got) if name == "Content-Security-Policy" else got) == expected, name

        hits = [cloud.hits for cloud in instances]
        hidden = await http.get(base + "/metrics", ssl=tls)
        assert hidden.status == 403 and [c.hits for c in instances] == hits

        token = tokens_for(JWT_SECRET).issue(world.user_ids["owner"])
        async with http.ws_connect(f"{base}/api/ws?token={token}", ssl=tls) as live:
            assert not live.closed  # upgraded through nginx
        async with http.ws_connect(f"{base}/api/edge/v1/stream", ssl=tls,
                                   headers={"Authorization": "Bearer t"}) as stream:
            assert not stream.closed

        too_big = await http.post(base + "/api/auth/login", data=b"x" * (3 * 2**19), ssl=tls,
                                  headers={"Content-Type": "application/json"})
        assert too_big.status == 413  # nginx: 1.5 MiB is over the 1m API limit
        batch = gzip.compress(os.urandom(2 * 2**20), compresslevel=1)
        upload = await http.post(base + BATCHES, data=batch, ssl=tls, headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip",
            "Authorization": "Bearer t",
        })
        # 2 MiB of gzip passed nginx; the cloud itself judged the (random) content.
        assert upload.status in (400, 422), upload.status
        assert upload.content_type == "application/problem+json"
