"""Batches that come through AWS IoT Core: their answers published back to the edge, and the
confirmation of the topic rule's HTTPS destination.

An edge on AWS IoT publishes its batches over MQTT; a topic rule's HTTPS action posts them to
``POST /api/edge/v1/batches`` with the header ``X-Smartfarm-Reply-Topic`` (deploy/aws/
topic-rule-batches.json). The edge waits for the cloud's answer on its acks topic, never for the
PUBACK (edge/iot_uplink.py), so the response body of such a request (``BatchAck``, the 409 gap
problem, any other problem) is published there with the IoT Data API (boto3 ``iot-data``). The
topic is derived from the authenticated edge, ``smartfarm/{farm_id}/edge/{edge_id}/acks``: the
header only says that an answer is wanted, never where it goes.

Before a rule may post anywhere, AWS IoT sends its destination a confirmation request (header
``x-amz-rules-engine-message-type: DestinationConfirmation``, JSON body with ``arn``,
``confirmationToken`` and ``enableUrl``). The cloud logs the URL and the token for the operator
(``aws iot confirm-topic-rule-destination --confirmation-token …``) and answers 200; it never
fetches the URL itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, Final

from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from cloud.errors import ValidationFailed
from cloud.sync.settings import SyncConfig

log = logging.getLogger(__name__)

REPLY_HEADER: Final = "X-Smartfarm-Reply-Topic"
MESSAGE_TYPE_HEADER: Final = "x-amz-rules-engine-message-type"
CONFIRMATION: Final = "DestinationConfirmation"
MAX_CONFIRMATION_BYTES: Final = 16 * 1024


def acks_topic(farm_id: str, edge_id: str) -> str:
    """The edge's acks topic (the default ``acks_topic`` of ``[cloud.aws_iot]`` on the edge)."""
    return f"smartfarm/{farm_id}/edge/{edge_id}/acks"


def iot_data_client(config: SyncConfig) -> Any | None:
    """The boto3 ``iot-data`` client when ``sync.iot_data_endpoint`` is set (None otherwise);
    credentials from boto3's chain. Short timeouts and one retry: a publish is awaited by the
    rule's request (acks) or by the publishing queue (commands), never worth a minute."""
    if not config.iot_data_endpoint:
        return None
    import boto3  # only for clouds that use AWS IoT; boto3 is slow to import
    from botocore.config import Config

    region = config.iot_region
    if region is None:  # https://abc-ats.iot.eu-west-1.amazonaws.com names its region
        found = re.search(r"\.iot\.([a-z0-9-]+)\.amazonaws\.", config.iot_data_endpoint)
        region = found.group(1) if found else None
    timeouts = Config(connect_timeout=5, read_timeout=10,
                      retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client("iot-data", endpoint_url=config.iot_data_endpoint, region_name=region,
                        config=timeouts)


class IotAckPublisher:
    """Publishes answers on edges' acks topics through an ``iot-data`` boto3 client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.published = 0
        self.failed = 0

    @classmethod
    def from_config(cls, config: SyncConfig) -> IotAckPublisher | None:
        """A publisher when ``sync.iot_data_endpoint`` is set (credentials: boto3's chain)."""
        client = iot_data_client(config)
        return None if client is None else cls(client)

    async def publish(self, edge: dict[str, Any], body: bytes, claimed: str) -> bool:
        """Publish ``body`` (an answer to a batch of ``edge``) on the edge's acks topic; False
        (and a warning) when AWS refuses or cannot be reached: the edge publishes the batch
        again after its ack timeout and gets the answer then."""
        topic = acks_topic(edge["farm_id"], edge["id"])
        if claimed != topic:
            log.warning("edge %s: reply topic %r in the request is not its own; answering on %s",
                        edge["id"], claimed[:200], topic)
        try:
            await asyncio.to_thread(self.client.publish, topic=topic, qos=1, payload=body)
        except (BotoCoreError, ClientError) as exc:
            self.failed += 1
            log.warning("edge %s: could not publish the batch answer on %s: %s",
                        edge["id"], topic, exc)
            return False
        self.published += 1
        return True


def is_confirmation(request: web.Request) -> bool:
    return request.headers.get(MESSAGE_TYPE_HEADER, "").lower() == CONFIRMATION.lower()


async def confirm_destination(request: web.Request) -> web.Response:
    """Log AWS IoT's destination confirmation (the URL that enables the destination) and
    answer 200. A body that is not the expected JSON is answered 400, never 500."""
    raw = await request.content.read(MAX_CONFIRMATION_BYTES + 1)
    try:
        doc = json.loads(raw) if len(raw) <= MAX_CONFIRMATION_BYTES else None
    except ValueError:
        doc = None
    token = doc.get("confirmationToken") if isinstance(doc, dict) else None
    url = doc.get("enableUrl") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not isinstance(url, str):
        token = request.query.get("confirmationToken")
        if not isinstance(token, str) or not token:
            raise ValidationFailed([{
                "field": "body.confirmationToken",
                "message": "a destination confirmation carries confirmationToken and enableUrl",
                "type": "missing",
            }])
        url = None
    arn = doc.get("arn") if isinstance(doc, dict) else None
    arn = request.headers.get("x-amz-rules-engine-destination-arn", arn)
    log.warning(
        "AWS IoT topic rule destination %s asks to be confirmed: open %s or run `aws iot"
        " confirm-topic-rule-destination --confirmation-token %s`",
        str(arn)[:300], str(url)[:2000], token[:2000],
    )
    return web.json_response({"status": "logged", "detail": "the confirmation URL is logged for"
                              " an operator to open"})

