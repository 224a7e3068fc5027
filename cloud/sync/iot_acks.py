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
fetches the URL itself. The request is unauthenticated: values not of AWS's shape are refused
(422), and the route limits how many are taken and logged (cloud/api/edge_sync.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Confirmation:
    token: str
    enable_url: str | None
    arn: str | None


# The shapes AWS sends (anything else is refused: these values end up in the log). Tokens are
# base64-like; the enable URL is AWS's own confirmdestination URL for that very token.
_TOKEN = re.compile(r"[A-Za-z0-9_+/=.-]{16,2048}")
_ENABLE_URL = re.compile(
    r"https://iot\.[a-z0-9-]{1,32}\.amazonaws\.com(?:\.cn)?/confirmdestination/(?P<token>[^/?#]+)"
)
_ARN = re.compile(
    r"arn:aws[a-z-]{0,16}:iot:[a-z0-9-]{1,32}:[0-9]{12}:ruledestination/http/[A-Za-z0-9_-]{1,64}"
)
ARN_HEADER: Final = "x-amz-rules-engine-destination-arn"


def _refuse(field: str, message: str, kind: str = "value_error") -> ValidationFailed:
    return ValidationFailed([{"field": field, "message": message, "type": kind}])


def _arn(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ARN.fullmatch(value):
        raise _refuse(field, "not a topic rule destination ARN")
    return value


async def read_confirmation(request: web.Request) -> Confirmation:
    """AWS IoT's destination confirmation, every value checked for the shape AWS sends (422
    naming the field otherwise, never a 500): the token in the JSON body (with its enableUrl) or,
    when the body is not that JSON, in the query."""
    raw = await request.content.read(MAX_CONFIRMATION_BYTES + 1)
    try:
        doc = json.loads(raw) if len(raw) <= MAX_CONFIRMATION_BYTES else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    token, url = doc.get("confirmationToken"), doc.get("enableUrl")
    if isinstance(token, str) and isinstance(url, str):
        if not _TOKEN.fullmatch(token):
            raise _refuse("body.confirmationToken", "not an AWS IoT confirmation token")
        found = _ENABLE_URL.fullmatch(url)
        if found is None or found["token"] != token:
            raise _refuse("body.enableUrl", "not AWS IoT's confirmdestination URL for this token")
    else:
        token, url = request.query.get("confirmationToken"), None
        if not token:
            raise _refuse(
                "body.confirmationToken",
                "a destination confirmation carries confirmationToken and enableUrl",
                "missing",
            )
        if not _TOKEN.fullmatch(token):
            raise _refuse("query.confirmationToken", "not an AWS IoT confirmation token")
    arn = _arn(doc.get("arn"), "body.arn")
    arn = _arn(request.headers.get(ARN_HEADER), f"header.{ARN_HEADER}") or arn
    return Confirmation(token=token, enable_url=url, arn=arn)


def log_confirmation(found: Confirmation) -> None:
    """Tell the operator how to confirm (values already checked, still quoted with %r)."""
    log.warning(
        "AWS IoT topic rule destination %r asks to be confirmed: open %r or run `aws iot"
        " confirm-topic-rule-destination --confirmation-token %r`",
        found.arn, found.enable_url, found.token[:2048],
    )
