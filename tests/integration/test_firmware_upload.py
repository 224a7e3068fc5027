"""Adding a firmware image from the edge's local page (``POST /api/firmware``, the image as the
body) on a real edge over HTTP: admin only, CSRF-safe, at most 8 MiB (declared or streamed),
checksums computed by the edge, the same refusals as ``smartfarm edge firmware add``, each a
problem document naming the field."""
from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from edge.firmware import MAX_IMAGE_BYTES, FirmwareStore
from tests.e2e.conftest import fast_settings, make_site
from tests.integration.test_onboarding import PROBLEM, Api

OCTETS = {"Content-Type": "application/octet-stream"}


def image(size: int = 4096) -> bytes:
    return bytes([0xE9]) + os.urandom(size - 1)


async def _post(session: aiohttp.ClientSession, url: str, data: Any,
                headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
    async with session.post(url, data=data,
                            headers=OCTETS if headers is None else headers) as resp:
        text = await resp.text()
        body = await resp.json(content_type=None) if text else None
        return resp.status, body, resp.content_type


async def test_the_edge_page_adds_a_firmware_image(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = await running_edge(settings)
    api = Api(app)
    url = f"{api.base}/api/firmware"
    data = image()
    async with aiohttp.ClientSession() as anonymous:
        status, _, _ = await _post(anonymous, f"{url}?version=1.3.0", data)
        assert status == 401
    async with aiohttp.ClientSession(auth=api.auth) as session:
        # Only the image itself: a form post (what another site could make a browser send) is
        # refused.
        status, problem, ctype = await _post(session, f"{url}?version=1.3.0", {"f": "x"},
                                             headers={})
        assert status == 415 and ctype == PROBLEM, problem
        for query, field in (("", "version"), ("?version=bad version", "version"),
                             ("?version=1.3.0&device=nobody", "device"),
                             ("?version=1.3.0&device=-x", "device"),
                             ("?version=1.3.0&extra=1", "extra")):
            status, problem, ctype = await _post(session, url + query, data)
            assert status == 422 and ctype == PROBLEM, (query, problem)
            assert field in {e["field"].split(".")[-1] for e in problem["errors"]}, (query,
                                                                                    problem)
        for body in (b"\x00" * 4096, b"\xe9" * 100):  # not an app image; too small
            status, problem, _ = await _post(session, f"{url}?version=1.3.0", body)
            assert status == 422 and [e["field"] for e in problem["errors"]] == ["file"], problem
        # Too large, declared (Content-Length) or streamed without one.
        status, problem, ctype = await _post(session, f"{url}?version=1.3.0",
                                             image(MAX_IMAGE_BYTES + 1))
        assert status == 413 and ctype == PROBLEM and problem["errors"][0]["field"] == "file"

        async def stream() -> AsyncIterator[bytes]:
            yield bytes([0xE9])
            for _ in range(MAX_IMAGE_BYTES // (1 << 20)):
                yield b"\0" * (1 << 20)

        status, problem, _ = await _post(session, f"{url}?version=1.3.0", stream())
        assert status == 413 and problem["errors"][0]["field"] == "file", problem
        # Nothing of the refused uploads is left behind.
        store = FirmwareStore(settings.data_path / "firmware")
        assert store.images() == []
        assert [p.name for p in store.root.glob(".upload-*")] == []

        # A good one: stored, its checksums the edge's own.
        status, made, _ = await _post(
            session, f"{url}?version=1.3.0&device=room-a-heater&filename=heater.ota.bin", data)
        assert status == 201, made
        assert made["sha256"] == hashlib.sha256(data).hexdigest()
        assert made["md5"] == hashlib.md5(data).hexdigest()
        assert (made["size"], made["devices"], made["filename"]) == (
            len(data), ["room-a-heater"], "heater.ota.bin")
        assert store.path(store.images()[0]).read_bytes() == data
        async with session.get(url) as resp:
            listed = await resp.json()
        assert [i["version"] for i in listed["images"]] == ["1.3.0"]
        # The same image again, or the same version for the same device: refused by name.
        status, problem, _ = await _post(session, f"{url}?version=1.4.0", data)
        assert status == 422 and problem["errors"][0]["field"] == "file", problem
        status, problem, _ = await _post(session, f"{url}?version=1.3.0&device=room-a-heater",
                                         image())
        assert status == 422 and problem["errors"][0]["field"] == "version", problem

    # A page session (cookie) must send the CSRF header, as for every change.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as page:
        async with page.post(f"{api.base}/api/login", json={
                "username": settings.api.admin_user,
                "password": settings.api.admin_password.get_secret_value()}) as resp:
            assert resp.status == 200
        status, _, _ = await _post(page, f"{url}?version=2.0.0", image())
        assert status == 403
        status, made, _ = await _post(page, f"{url}?version=2.0.0", image(),
                                      headers={**OCTETS, "X-Requested-With": "smartfarm-edge"})
        assert status == 201 and made["devices"] == [], made
