"""Setting up an edge against a real cloud: `smartfarm edge register` asks the cloud whom the
token belongs to and refuses a mismatch before writing anything; a running edge that was set up
wrong anyway (``--offline``) says exactly what is wrong when the cloud refuses its uploads."""
from __future__ import annotations

import asyncio
import gzip
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.cli import edge_main
from edge.config import load_config
from tests.chaos.conftest import FAST_CLOUD, Cloud, cloud, edge_app
from tests.e2e.conftest import fast_settings, make_site, wait_for

pytestmark = pytest.mark.postgres
FIXTURES = (cloud, edge_app)  # the real cloud's fixtures, found by pytest under these names

EDGE_ID = "edge-right"


async def register(config: Path, url: str, token: str, *extra: str) -> int:
    """``smartfarm edge register`` on a worker thread: the in-process cloud serves on this loop."""
    argv = ["register", "--cloud", url, "--token", token, "--config", str(config), *extra]
    return await asyncio.to_thread(edge_main, argv)


def written(config: Path) -> bool:
    return "[cloud]" in config.read_text() or (config.parent / "credentials/cloud-token").exists()


async def test_register_refuses_a_token_that_belongs_to_another_edge_or_farm(
    cloud: Any, tmp_path: Path, farm_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    the_cloud: Cloud = await cloud()
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), EDGE_ID, devices=False)

    # The wrong edge id: refused, nothing written, and the message names both.
    assert await register(config, the_cloud.url, reg.token, "--edge-id", "edge-wrong") == 2
    err = capsys.readouterr().err
    assert f"token belongs to edge {EDGE_ID} of farm {farm_id}, not edge edge-wrong" in err
    assert not written(config)

    # A site of another farm with this farm's token: refused, naming both farms.
    other = make_site(tmp_path / "other", f"{farm_id}x")
    assert await register(other, the_cloud.url, reg.token, "--edge-id", EDGE_ID) == 2
    err = capsys.readouterr().err
    assert f"token belongs to edge {EDGE_ID} of farm {farm_id}" in err
    assert f"farm {farm_id}x" in err
    assert not written(other)

    # A token the cloud does not know: refused as such (not as a network problem).
    assert await register(config, the_cloud.url, "sfe_not-a-token", "--edge-id", EDGE_ID) == 2
    assert "does not know this token" in capsys.readouterr().err
    assert not written(config)

    # Nothing listening there: refused, with the way out for a Pi set up before its uplink.
    dead = "http://127.0.0.1:9"
    assert await register(config, dead, reg.token, "--edge-id", EDGE_ID) == 2
    assert "--offline" in capsys.readouterr().err
    assert not written(config)

    # Without --edge-id the token's own edge is taken; the config then says so.
    assert await register(config, the_cloud.url, reg.token) == 0
    assert f"edge {EDGE_ID} of farm {farm_id}" in capsys.readouterr().out
    assert load_config(config).cloud.edge_id == EDGE_ID


def alerts(db: Path, kind: str) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in conn.execute(
            "SELECT message FROM alerts WHERE kind = ? AND state = 'active'", (kind,))]
    finally:
        conn.close()


async def test_an_edge_registered_under_the_wrong_id_is_told_whose_token_it_has(
    cloud: Any, edge_app: Any, tmp_path: Path, farm_id: str
) -> None:
    the_cloud: Cloud = await cloud()
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), EDGE_ID, devices=False)
    assert await register(config, the_cloud.url, reg.token, "--edge-id", "edge-wrong",
                          "--offline") == 0
    with config.open("a") as fh:
        for key, value in FAST_CLOUD.items():
            fh.write(f"{key} = {value!r}\n")
    run = await edge_app(fast_settings(config))
    db = run.app.settings.db_path
    found = await wait_for(lambda: alerts(db, "sync_auth") or alerts(db, "sync_refused"), 20,
                           "the alert about the refused uploads")
    message = " ".join(found)  # type: ignore[arg-type]
    assert f"belongs to edge {EDGE_ID} of farm {farm_id}" in message, message
    assert "edge-wrong" in message
    assert "re-register" not in message  # the token is fine; the edge id is not


# ---- the cloud's side ---------------------------------------------------------------------------

async def edge_call(url: str, method: str, path: str, token: str, body: bytes | None = None
                    ) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers |= {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession() as session, session.request(
        method, url + path, data=None if body is None else gzip.compress(body), headers=headers
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_whoami_names_the_edge_and_farm_of_a_token(
    cloud: Any, tmp_path: Path, farm_id: str
) -> None:
    the_cloud: Cloud = await cloud()
    reg = await the_cloud.provision(load_config(make_site(tmp_path, farm_id)), EDGE_ID,
                                    devices=False)
    status, answer = await edge_call(the_cloud.url, "GET", "/api/edge/v1/whoami", reg.token)
    assert status == 200, answer
    assert (answer["edge_id"], answer["farm_id"]) == (EDGE_ID, farm_id)
    # Unknown tokens, no token, and user tokens (not edge tokens): 401 problems.
    for token in ("", "sfe_nope", the_cloud.token):
        status, answer = await edge_call(the_cloud.url, "GET", "/api/edge/v1/whoami", token)
        assert status == 401 and answer["detail"], answer
