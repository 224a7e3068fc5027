"""A simulated node in claim mode (docs/onboarding.md): flashed with the farm's claim code and no
credentials of its own, it asks to join, waits for an operator to adopt it, takes the
credentials the edge hands its claim session, keeps them in its "flash" (a small JSON file) and
from then on runs as an ordinary node of the room it was adopted into.

The contract it speaks, as the ESPHome claim-mode node file does:

* first boot: draw a claim key (32 random hex digits) and keep it in flash;
* log in with ``username`` = its id, ``password`` = ``<claim code>:<claim key>``, client id = its
  id (``<id>@<room>`` when it was made for a room); refused (CONNACK 5) until adopted: retry;
* once adopted, the same login is accepted as a claim session: subscribe to
  ``farm/<farm>/claim/<id>`` (QoS 1) and wait for ``{"device_id", "room_id", "kind",
  "actuator", "username", "password"}``; store it; log in again with those credentials;
* a boot with credentials in flash goes straight to the last step.

Through an external broker (Mosquitto, ``via="mosquitto"``; edge.external_claims) the claim
login is the shared claim account instead: ``username`` = ``smartfarm-claim``, ``password`` =
the claim code, client id = ``<id>.<claim key>``; the node subscribes to
``farm/<farm>/claim/<id>.<claim key>`` and says hello on ``farm/<farm>/claim/hello`` every
``retry_s`` (``{"device_id", "claim_key", "room"?}``) until the credentials come.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import aiomqtt

from firmware_sim.physics import ROLES
from shared.errors import SmartfarmError
from shared.mqtt_client import MqttClient
from shared.topics import claim_topic, is_valid_id

log = logging.getLogger(__name__)

CLAIM_ACCOUNT: Final = "smartfarm-claim"  # Mosquitto's claim account (edge.external_claims)


class ClaimError(SmartfarmError):
    """The node's flash file or the credentials handed to it cannot be used."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the edge handed over, as the node keeps it."""

    device_id: str
    room_id: str
    kind: str
    actuator: str | None
    password: str


def parse_credentials(device_id: str, payload: bytes) -> Credentials:
    """The claim topic's message, checked: for this node, a room id, a kind, a password."""
    try:
        doc: Any = json.loads(payload)
    except ValueError as exc:
        raise ClaimError(f"credentials are not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("device_id") != device_id:
        raise ClaimError("credentials for another device")
    room, kind, actuator = doc.get("room_id"), doc.get("kind"), doc.get("actuator")
    password = doc.get("password")
    if not isinstance(room, str) or not is_valid_id(room):
        raise ClaimError(f"credentials: bad room_id {room!r}")
    if kind not in ("sensor", "actuator") or (kind == "actuator") != (actuator in ROLES):
        raise ClaimError(f"credentials: bad kind {kind!r} / actuator {actuator!r}")
    if doc.get("username") != device_id or not isinstance(password, str) or not password:
        raise ClaimError("credentials: the username must be the id, with a password")
    return Credentials(device_id=device_id, room_id=room, kind=kind,
                       actuator=actuator if kind == "actuator" else None, password=password)


class Flash:
    """The node's persistent storage: its claim key and, once adopted, its credentials."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ClaimError(f"{self.path}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ClaimError(f"{self.path}: expected a JSON object")
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".flash-")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(doc, out)
        os.replace(tmp, self.path)

    def claim_key(self) -> str:
        """The node's claim key, drawn on first use and kept."""
        doc = self._read()
        key = doc.get("claim_key")
        if not isinstance(key, str) or len(key) != 32:
            key = secrets.token_hex(16)
            self._write({**doc, "claim_key": key})
        return key

    def credentials(self) -> Credentials | None:
        creds = self._read().get("credentials")
        if creds is None:
            return None
        try:
            return Credentials(**creds)
        except TypeError:
            raise ClaimError(f"{self.path}: unreadable credentials") from None

    def store(self, creds: Credentials) -> None:
        self._write({**self._read(), "credentials": asdict(creds)})


@dataclass
class ClaimNode:
    """The claim-mode half of a node: ``credentials()`` returns once it has them."""

    farm_id: str
    device_id: str
    claim_code: str
    flash: Flash
    host: str = "127.0.0.1"
    port: int = 1883
    room_hint: str | None = None
    retry_s: float = 1.0
    via: Literal["embedded", "mosquitto"] = "embedded"
    attempts: int = 0  # claim logins tried (refused or accepted)
    sessions: int = 0  # claim logins the broker accepted

    def __post_init__(self) -> None:
        claim_topic(self.farm_id, self.device_id)  # validates both ids
        if self.room_hint is not None and not is_valid_id(self.room_hint):
            raise ClaimError(f"bad room {self.room_hint!r}")

    @property
    def client_id(self) -> str:
        return self.device_id if self.room_hint is None else f"{self.device_id}@{self.room_hint}"

    async def credentials(self) -> Credentials:
        """Its credentials: from flash, else by claiming until an operator adopts it."""
        stored = self.flash.credentials()
        if stored is not None:
            return stored
        key = self.flash.claim_key()
        password = self.claim_code if self.via == "mosquitto" else f"{self.claim_code}:{key}"
        jitter = random.Random(self.device_id)  # noqa: S311 - retry pacing, not crypto
        while True:
            self.attempts += 1
            try:
                creds = await self._session(password)
            except aiomqtt.MqttError as exc:
                log.debug("%s: claim login refused or lost (%s); retrying", self.device_id, exc)
                creds = None
            if creds is not None:
                self.flash.store(creds)
                log.info("%s adopted into room %s: credentials stored", self.device_id,
                         creds.room_id)
                return creds
            await asyncio.sleep(self.retry_s * jitter.uniform(0.5, 1.5))

    async def _session(self, password: str) -> Credentials | None:
        external = self.via == "mosquitto"
        key = self.flash.claim_key()
        topic = claim_topic(self.farm_id, self.device_id)
        async with MqttClient(
            self.host, self.port, username=CLAIM_ACCOUNT if external else self.device_id,
            password=password, identifier=f"{self.device_id}.{key}" if external
            else self.client_id, keepalive=30, timeout=5.0,
        ) as client:
            self.sessions += 1
            await client.subscribe(f"{topic}.{key}" if external else topic, qos=1)
            hello = asyncio.create_task(self._hello(client, key)) if external else None
            try:
                async for message in client.messages:
                    try:
                        return parse_credentials(self.device_id, bytes(message.payload))
                    except ClaimError as exc:
                        log.warning("%s: %s; still waiting", self.device_id, exc)
            finally:
                if hello is not None:
                    hello.cancel()
        return None

    async def _hello(self, client: aiomqtt.Client, key: str) -> None:
        doc: dict[str, str] = {"device_id": self.device_id, "claim_key": key}
        if self.room_hint is not None:
            doc["room"] = self.room_hint
        while True:
            await client.publish(f"farm/{self.farm_id}/claim/hello",
                                 json.dumps(doc).encode(), qos=1)
            await asyncio.sleep(self.retry_s)
