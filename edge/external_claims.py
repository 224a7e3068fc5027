"""Claims through an external broker (Mosquitto, ``broker.mode = "external"``).

Mosquitto cannot tell the edge about a refused login, so there a node in claim mode logs in
with one shared **claim account** instead (username ``smartfarm-claim``, password: the farm's
claim code, as Mosquitto's password file holds it) and client id ``<id>.<claim key>``. The
Mosquitto ACL (``edge.credentials.render_mosquitto_acl``) lets that account publish only
``farm/<farm>/claim/hello`` and read only ``farm/<farm>/claim/<its client id>``: a topic that
names the node's own claim key, which nobody else knows. The node says hello every few seconds::

    {"device_id": "esp-3c71bf", "claim_key": "<16-64 letters/digits>", "room": "oyster-a"?}

and the edge, subscribed to the hellos as its own user, treats each as a claim login
(``edge.onboarding``): recorded as pending (first key wins), and once the device is adopted,
answered with its credentials on ``farm/<farm>/claim/<id>.<key>`` (QoS 1, not retained). What
Mosquitto does not give the edge: the node's IP address (listed as ``mosquitto``), and a new
device's account: as for every device with Mosquitto, its password reaches Mosquitto when the
installer regenerates the password file (deploy/mosquitto/README.md).
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import aiomqtt

from edge.claim_code import CLAIM_KEY_RE
from edge.credentials import edge_login
from edge.onboarding import Onboarding
from shared.backoff import Backoff
from shared.mqtt_client import MqttClient
from shared.topics import claim_topic, is_valid_id

if TYPE_CHECKING:
    from edge.config import EdgeSettings

log = logging.getLogger(__name__)

CLAIM_ACCOUNT: Final = "smartfarm-claim"
ADDRESS: Final = "mosquitto"  # what the pending list shows for where it knocked from


def hello_topic(farm_id: str) -> str:
    return f"farm/{farm_id}/claim/hello"


def claim_client_id(device_id: str, key: str) -> str:
    """A claim-mode node's client id on an external broker; its claim topic is named by it."""
    return f"{device_id}.{key}"


def delivery_topic(farm_id: str, device_id: str, key: str) -> str:
    return f"{claim_topic(farm_id, device_id)}.{key}"


def parse_hello(payload: bytes) -> tuple[str, str, str | None] | None:
    """(device id, claim key, room it was made for) of a hello; None when it is not one."""
    try:
        doc: Any = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    device_id, key, room = doc.get("device_id"), doc.get("claim_key"), doc.get("room")
    if not (isinstance(device_id, str) and is_valid_id(device_id) and isinstance(key, str)
            and CLAIM_KEY_RE.fullmatch(key)):
        return None
    if room is not None and not (isinstance(room, str) and is_valid_id(room)):
        return None
    return device_id, key, room


class ExternalClaims:
    """The edge's side of claims through an external broker: its own connection, as the edge."""

    def __init__(self, settings: EdgeSettings, onboarding: Onboarding,
                 address: Callable[[], tuple[str, int]]) -> None:
        self.settings = settings
        self.onboarding = onboarding
        self._address = address
        self.subscribed = asyncio.Event()
        self.hellos = 0  # hellos handled (tests and logs)
        self.refused = 0  # messages on the hello topic that were not hellos

    async def handle(self, client: aiomqtt.Client, payload: bytes) -> None:
        """One hello: a claim login of the node it names (see edge.onboarding)."""
        hello = parse_hello(payload)
        if hello is None:
            self.refused += 1
            log.warning("not a claim hello on %s: ignored", hello_topic(self.settings.farm_id))
            return
        device_id, key, room = hello
        self.hellos += 1
        # Mosquitto checked the claim code at login: the claim account's password is the code.
        password = f"{self.onboarding.claim_code()}:{key}"
        if await self.onboarding.claim_session(device_id, password):
            doc = await asyncio.to_thread(self.onboarding.credentials, device_id)
            if doc is not None:
                await client.publish(delivery_topic(self.settings.farm_id, device_id, key),
                                     json.dumps(doc, separators=(",", ":")).encode(), qos=1,
                                     retain=False)
                self.onboarding.delivered += 1
            return
        await self.onboarding.knock(device_id, password, ADDRESS,
                                    device_id if room is None else f"{device_id}@{room}")

    async def run(self) -> None:
        """Listen for hellos, reconnecting with backoff, until cancelled."""
        self.onboarding.claim_code()  # made on first start, as with the embedded broker
        backoff = Backoff(0.5, 30.0)
        topic = hello_topic(self.settings.farm_id)
        while True:
            host, port = self._address()
            try:
                username, password = edge_login(self.settings)
                async with MqttClient(
                    host, port, username=username, password=password,
                    identifier=f"smartfarm-edge-{self.settings.farm_id}-claims",
                ) as client:
                    await client.subscribe(topic, qos=1)
                    self.subscribed.set()
                    backoff.reset()
                    async for message in client.messages:
                        try:
                            await self.handle(client, bytes(message.payload))
                        except aiomqtt.MqttError:
                            raise
                        except Exception:
                            log.exception("handling a claim hello failed")
            except aiomqtt.MqttError as exc:
                log.warning("claims: connection to %s:%d lost (%s); retrying", host, port, exc)
            finally:
                self.subscribed.clear()
            await asyncio.sleep(backoff.delay())
