"""Webhook delivery: a JSON POST signed with HMAC-SHA256.

Headers: ``X-Smartfarm-Timestamp`` (Unix seconds) and ``X-Smartfarm-Signature:
sha256=<hex>`` where the digest is HMAC-SHA256(secret, "<timestamp>." + body). A receiver
recomputes it over the raw body, compares in constant time and rejects old timestamps (replay).
``X-Smartfarm-Delivery`` is the same on retries of one delivery, for de-duplication.

2xx is delivered; 408, 425, 429, 5xx, timeouts and connection errors are retried with backoff
(``jobs.max_attempts`` in all); other answers, and URLs that ``check_url`` refuses, are final.
Loopback, private and link-local targets are refused unless ``notify.allow_private_webhooks`` (a
user's URL must not reach the cloud's own network).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from urllib.parse import urlsplit

import aiohttp

from cloud.notify.delivery import DeliveryFailed, Notice

RETRY_STATUS = frozenset({408, 425, 429})
MAX_URL = 2000


def check_url(url: str) -> str:
    """``url`` if it can be a webhook target: http(s), a host, a port from 1 to 65535 when
    given, no credentials (the signing secret authenticates deliveries), no spaces or control
    characters, at most MAX_URL characters. ValueError saying what is wrong otherwise."""
    if len(url) > MAX_URL:
        raise ValueError(f"a webhook URL has at most {MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("a webhook URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL (is the port a number from 1 to 65535?)") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("a webhook URL is http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("no credentials in a webhook URL: deliveries are signed instead")
    if not parts.hostname:
        raise ValueError("a webhook URL names a host")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port of a webhook URL is from 1 to 65535")
    return url


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does (used by the tests)."""
    return hmac.compare_digest(signature(secret, timestamp, body), header)


async def _check_target(url: str, allow_private: bool) -> None:
    try:  # stored before the API checked URLs, or since edited in the database
        check_url(url)
    except ValueError as exc:
        raise DeliveryFailed(f"webhook URL refused: {exc}", transient=False) from None
    parts = urlsplit(url)
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )
    except OSError as exc:
        raise DeliveryFailed(f"cannot resolve {parts.hostname}: {exc}", transient=True) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise DeliveryFailed(
                f"webhook target {parts.hostname} is a non-public address", transient=False
            )


async def send_webhook(
    url: str, secret: str, notice: Notice, *, timeout_s: float, allow_private: bool
) -> None:
    await _check_target(url, allow_private)
    body = json.dumps(notice.payload(), separators=(",", ":")).encode()
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "smartfarm-webhook/1",
        "X-Smartfarm-Delivery": str(notice.delivery_id),
        "X-Smartfarm-Timestamp": stamp,
        "X-Smartfarm-Signature": signature(secret, stamp, body),
    }
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
        ):
            status = resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise DeliveryFailed(f"webhook unreachable: {exc!r}", transient=True) from exc
    if 200 <= status < 300:
        return
    transient = status in RETRY_STATUS or status >= 500
    raise DeliveryFailed(f"webhook answered {status}", transient=transient)
