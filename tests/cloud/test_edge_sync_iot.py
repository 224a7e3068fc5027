"""Batches that come through an AWS IoT topic rule: the cloud publishes each answer on the
authenticated edge's acks topic with the IoT Data API (botocore's Stubber stands in for AWS), and
takes AWS IoT's HTTPS destination confirmation (logged, 200, never a 500)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from cloud.sync.service import EDGE_SYNC
from tests.cloud import world as w
from tests.cloud.test_edge_sync import (
    EDGE,
    batch,
    ok,
    problem,
    reading,
    sync_client,
    upload,
)

pytestmark = pytest.mark.postgres
FIXTURES = (sync_client,)  # test_edge_sync's fixture, found by pytest under this name

ENDPOINT = "https://example-ats.iot.eu-west-1.amazonaws.com"
ACKS = f"smartfarm/{w.FARM}/edge/{w.EDGE}/acks"
REPLY = {"X-Smartfarm-Reply-Topic": ACKS}


def published(client: Any) -> list[dict[str, Any]]:
    """Every Publish call's parameters, as the client builds them (under the Stubber too)."""
    calls: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))

    client.meta.events.register("provide-client-params.iot-data.Publish", capture)
    return calls


async def test_answers_of_batches_through_iot_are_published_on_the_edges_acks_topic(  # type: ignore[no-untyped-def]
    sync_client,
) -> None:
    client = await sync_client(iot_data_endpoint=ENDPOINT)
    publisher = client.app[EDGE_SYNC].iot_acks
    assert publisher is not None
    assert publisher.client.meta.region_name == "eu-west-1"  # read from the endpoint
    calls = published(publisher.client)
    expected = {"topic": ACKS, "qos": 1, "payload": ANY}
    with Stubber(publisher.client) as stub:
        for _ in range(3):
            stub.add_response("publish", {}, expected)
        stub.add_client_error("publish", "ThrottlingException", http_status_code=429,
                              expected_params=expected)

        ack = await ok(await upload(client, batch([reading(1), reading(2)]), headers=REPLY))
        assert ack["acked_seq"] == 2
        assert json.loads(calls[-1]["payload"]) == ack  # the response body, unchanged

        # A reply topic naming another farm's edge is not trusted: the answer goes to the
        # authenticated edge's own topic (the Stubber checks the topic of every call).
        spoofed = {"X-Smartfarm-Reply-Topic": f"smartfarm/{w.OTHER_FARM}/edge/x/acks"}
        ack = await ok(await upload(client, batch([reading(3)]), headers=spoofed))
        assert calls[-1]["topic"] == ACKS and json.loads(calls[-1]["payload"]) == ack

        # A gap: the 409 problem (with expected_seq) is what the edge needs to hear.
        gap = await problem(await upload(client, batch([reading(9)]), headers=REPLY), 409)
        assert gap["expected_seq"] == 4
        assert json.loads(calls[-1]["payload"]) == gap

        # AWS refusing the publish does not fail the rule's request: the batch is stored, the
        # edge publishes it again after its ack timeout and hears the answer then.
        ack = await ok(await upload(client, batch([reading(4)]), headers=REPLY))
        assert ack["acked_seq"] == 4
        stub.assert_no_pending_responses()
    assert (publisher.published, publisher.failed) == (3, 1)

    # Without the header (HTTPS uploads) and for an unknown token, nothing is published.
    before = len(calls)
    await ok(await upload(client, batch([reading(5)])))
    bad = {**REPLY, "Authorization": "Bearer not-an-edge-token"}
    await problem(await upload(client, batch([reading(6)]), headers=bad), 401)
    assert len(calls) == before


async def test_a_batch_through_iot_without_a_publisher_is_still_stored(sync_client) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client()
    assert client.app[EDGE_SYNC].iot_acks is None
    ack = await ok(await upload(client, batch([reading(1)]), headers=REPLY))
    assert ack["acked_seq"] == 1


async def test_the_https_destination_confirmation_is_logged_and_answered(  # type: ignore[no-untyped-def]
    sync_client, caplog
) -> None:
    client = await sync_client()
    token = "AYADeMXLrPrNY2wqJAKsFNn-NBJndA"
    enable = f"https://iot.eu-west-1.amazonaws.com/confirmdestination/{token}"
    arn = "arn:aws:iot:eu-west-1:123456789012:ruledestination/http/7a280e37"
    body = {"arn": arn, "confirmationToken": token, "enableUrl": enable,
            "messageType": "DestinationConfirmation"}
    headers = {"x-amz-rules-engine-message-type": "DestinationConfirmation",
               "x-amz-rules-engine-destination-arn": arn, "Content-Type": "application/json"}
    caplog.set_level(logging.WARNING, logger="cloud.sync.iot_acks")
    # AWS posts to {confirmationUrl}/?confirmationToken=… (the batches URL by default) …
    resp = await client.post(f"/api/edge/v1/batches/?confirmationToken={token}",
                             data=json.dumps(body), headers=headers)
    assert resp.status == 200, await resp.text()
    # … and a confirmation URL without the slash reaches the batches handler itself.
    resp = await client.post("/api/edge/v1/batches", data=json.dumps(body), headers=headers)
    assert resp.status == 200, await resp.text()
    logged = [r.getMessage() for r in caplog.records]
    assert sum(enable in m and token in m for m in logged) == 2
    # The token in the query is enough; anything else is a 422 naming the field, never a 500.
    resp = await client.post(f"/api/edge/v1/batches/?confirmationToken={token}", data=b"\xff{",
                             headers=headers)
    assert resp.status == 200
    for path in ("/api/edge/v1/batches/", "/api/edge/v1/batches"):
        for data in (b"", b"[1, 2]", b"{not json", json.dumps({"enableUrl": 3}).encode()):
            body422 = await problem(await client.post(path, data=data, headers=headers), 422)
            assert body422["errors"][0]["field"] == "body.confirmationToken"
    # A plain edge upload is not mistaken for one.
    await ok(await upload(client, batch([reading(1)]), headers={**EDGE}))
