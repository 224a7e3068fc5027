"""`smartfarm edge register`: ask the cloud whom the token belongs to, then write the config's
`[cloud]` section and the token file.

An edge configured with another edge's id, or for another farm, would poll happily and have every
upload refused; the cloud's ``GET /api/edge/v1/whoami`` answers for the token, so the mismatch is
named at set-up instead. Synchronous (urllib): it runs once, from the command line.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import ConfigError, check_config_text, load_config
from edge.credentials import write_atomic
from shared.topics import is_valid_id

WHOAMI_PATH = "/api/edge/v1/whoami"


class RegistrationError(ConfigError):
    """The cloud refused the token, or it belongs to another edge or farm; nothing was written."""


@dataclass(frozen=True, slots=True)
class EdgeIdentity:
    edge_id: str
    farm_id: str
    name: str = ""


def _detail(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        return str(doc["detail"])
    return raw[:200].decode("utf-8", "replace").strip()


def fetch_identity(url: str, token: str, *, timeout_s: float = 10.0) -> EdgeIdentity:
    """The edge and farm the cloud at ``url`` says ``token`` belongs to (RegistrationError if it
    cannot say)."""
    endpoint = url.rstrip("/") + WHOAMI_PATH
    request = urllib.request.Request(  # noqa: S310 - the scheme was checked: http(s) only
        endpoint, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            raw = response.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        detail = _detail(exc.read(4096))
        if exc.code == 401:
            raise RegistrationError(
                f"the cloud at {url} does not know this token ({detail}): copy the token shown"
                " when the edge was added in the cloud, or rotate the edge's token there"
            ) from None
        if exc.code == 404:
            raise RegistrationError(
                f"the cloud at {url} has no {WHOAMI_PATH} (not a smartfarm cloud, or an older"
                " one): check the URL, or pass --offline to write the config unchecked"
            ) from None
        raise RegistrationError(
            f"the cloud at {url} answered HTTP {exc.code} ({detail}); nothing was written"
        ) from None
    except OSError as exc:  # URLError, timeouts, refused connections
        reason = getattr(exc, "reason", exc)
        raise RegistrationError(
            f"cannot reach the cloud at {url} ({reason}): check the URL, or pass --offline to"
            " write the config without checking the token"
        ) from None
    try:
        doc: Any = json.loads(raw)
        return EdgeIdentity(edge_id=str(doc["edge_id"]), farm_id=str(doc["farm_id"]),
                            name=str(doc.get("name") or ""))
    except (ValueError, KeyError, TypeError):
        raise RegistrationError(
            f"the cloud at {url} answered {WHOAMI_PATH} with something unreadable"
        ) from None


def check_identity(identity: EdgeIdentity, *, edge_id: str | None, farm_id: str,
                   farm_source: str = "farm_id in edge.toml") -> None:
    """RegistrationError naming exactly what differs between the token's owner and this edge's
    ``edge_id`` (None: take the token's) and ``farm_id`` (where it comes from: ``farm_source``)."""
    owner = f"the token belongs to edge {identity.edge_id} of farm {identity.farm_id}"
    wrong_farm = identity.farm_id != farm_id
    wrong_edge = edge_id is not None and edge_id != identity.edge_id
    if wrong_farm:
        named = f"edge {edge_id} of farm {farm_id}" if wrong_edge else f"farm {farm_id}"
        raise RegistrationError(
            f"{owner}, not {named} ({farm_source}): use the token of an edge"
            f" registered in farm {farm_id}, or set farm_id = \"{identity.farm_id}\""
        )
    if wrong_edge:
        raise RegistrationError(
            f"{owner}, not edge {edge_id}: pass --edge-id {identity.edge_id}, or the token"
            f" that was shown when edge {edge_id} was added"
        )


_TABLE_RE = re.compile(r"^\s*\[")


def register_cloud(config_path: Path, url: str, token: str, edge_id: str | None = None, *,
                   check: bool = False) -> Path:
    """Point the edge at a cloud: write the `[cloud]` section (url, edge_id, token_file) and the
    token file (mode 0600); returns the token file.

    With ``check`` (what `smartfarm edge register` does unless --offline) the cloud is asked
    first whom the token belongs to: another edge or farm than this config's, an unknown token
    or an unreachable cloud raise RegistrationError and nothing is written; the edge id defaults
    to the token's. The check blocks (urllib): callers on an event loop that also serves the
    cloud (the all-in-one demo) leave it off. Unchecked, the edge id defaults to the farm id."""
    settings = load_config(config_path)
    if edge_id is not None and not is_valid_id(edge_id):
        raise ConfigError(f"edge id {edge_id!r}: use letters, digits, '_' or '-'")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--cloud {url!r}: must start with http:// or https://")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError("--token: empty or contains whitespace")
    if check:
        identity = fetch_identity(url, token)
        check_identity(identity, edge_id=edge_id, farm_id=settings.farm_id,
                       farm_source=f"farm_id in {config_path.name}")
        edge_id = identity.edge_id
    edge_id = edge_id or settings.farm_id
    if not is_valid_id(edge_id):
        raise ConfigError(f"edge id {edge_id!r}: use letters, digits, '_' or '-'")
    token_file = settings.cloud.token_file or Path("credentials/cloud-token")
    section = [
        "[cloud]",
        "# Written by `smartfarm edge register`; the token is read from token_file (mode 0600)",
        "# or from SMARTFARM_EDGE_CLOUD__TOKEN.",
        f"url = {json.dumps(url.rstrip('/'))}",
        f"edge_id = {json.dumps(edge_id)}",
        f"token_file = {json.dumps(str(token_file))}",
    ]
    # Keep every other line of the file (and its comments); replace an existing [cloud] table.
    kept: list[str] = []
    skipping = False
    for line in config_path.read_text().splitlines():
        if _TABLE_RE.match(line):
            skipping = line.strip() == "[cloud]"
        if not skipping:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    text = "\n".join([*kept, "", *section]) + "\n"
    check_config_text(config_path, text)
    token_path = settings.resolve(token_file)
    write_atomic(token_path, token + "\n")
    write_atomic(config_path, text, mode=0o644)
    return token_path
