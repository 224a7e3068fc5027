"""Commands and config published on the commands topic of edges on AWS IoT Core.

An edge whose batches come through the IoT topic rule (``edges.iot_since``, set and cleared by
the batches endpoint) subscribes to ``smartfarm/{farm_id}/edge/{edge_id}/commands``. With
``sync.iot_data_endpoint`` set, every pending command for a room it serves and every new config
version (its slice of the farm's config) is published there with the IoT Data API, as the same
JSON the WebSocket sends; the WebSocket and polling paths are untouched and the edge runs a
command that arrives both ways once.

Driven by the edge hub's NOTIFY events (so every writer counts: the commands API, jobs, config
edits from any instance or from an edge), never by a request: the request that made the change
does not wait, and an AWS failure is logged and counted. Every instance hears every event, so
each command (and each config version per edge) is claimed in PostgreSQL first and published by
one instance. A command past its TTL is never published. The expiry sweep also runs a catch-up:
commands still pending ``iot_republish_s`` after their publish (AWS IoT drops a QoS 1 message
for an offline edge), config an edge has not applied, and anything missed while LISTEN was down.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter

from cloud.db import downlink, iot_down
from cloud.db.database import Database
from cloud.errors import CloudError
from cloud.sync.hub import Event
from cloud.sync.link import build_config, cloud_command
from cloud.sync.settings import SyncConfig

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES: Final = 128 * 1024  # AWS IoT Core's payload limit
QUEUE_SIZE: Final = 1024
Kind = Literal["command", "config"]


def commands_topic(farm_id: str, edge_id: str) -> str:
    """The edge's commands topic (the default ``commands_topic`` of ``[cloud.aws_iot]``, the
    only one the thing policy lets it subscribe to)."""
    return f"smartfarm/{farm_id}/edge/{edge_id}/commands"


class IotDownPublisher:
    """Publishes commands and config on IoT edges' commands topics through an ``iot-data``
    client (anything with boto3's ``publish(topic=, qos=, payload=)``). ``run()`` is its work
    until cancelled; ``notify`` is the hub's watcher."""

    def __init__(
        self, db: Database, client: Any, config: SyncConfig, registry: CollectorRegistry
    ) -> None:
        self.db = db
        self.client = client
        self._ttl = config.command_ttl_s
        self._again = config.iot_republish_s
        self._queue: asyncio.Queue[tuple[str | None, Event]] = asyncio.Queue(QUEUE_SIZE)
        self._missed = False
        self.events = 0  # hub events handled (tests wait on it)
        self.published = 0
        self.failed = 0
        self.metric = Counter(
            "smartfarm_sync_iot_down",
            "commands and config published on AWS IoT edges' commands topics, by outcome",
            ["kind", "outcome"],
            registry=registry,
        )

    def notify(self, farm_id: str | None, event: Event) -> None:
        """Queue a hub event (farm None: catch up); never blocks the hub."""
        try:
            self._queue.put_nowait((farm_id, event))
        except asyncio.QueueFull:
            self._missed = True  # caught up after the queue drains a little

    async def idle(self) -> None:
        """Wait until every queued event is handled (tests)."""
        await self._queue.join()

    async def run(self) -> None:
        while True:
            farm_id, event = await self._queue.get()
            try:
                if self._missed:
                    self._missed = False
                    await self.catch_up()
                if farm_id is None or event.kind == "resync":
                    await self.catch_up()
                elif event.kind == "command" and event.command_id is not None:
                    await self.command(farm_id, event.command_id)
                elif event.kind == "config":
                    await self.config(farm_id, event.version)
            except CloudError as exc:  # the database away: the sweep catches up later
                self.metric.labels(event.kind, "error").inc()
                log.warning("publishing the %s of farm %s to AWS IoT edges failed: %s",
                            event.kind, farm_id, exc.detail)
            except Exception:  # a bug must not end the loop either
                self.metric.labels(event.kind, "error").inc()
                log.exception("publishing the %s of farm %s to AWS IoT edges failed",
                              event.kind, farm_id)
            finally:
                self.events += 1
                self._queue.task_done()

    async def command(self, farm_id: str, command_id: str) -> int:
        """Publish a new command to its farm's IoT edges; the number of publishes made."""
        edges = await iot_down.iot_edges(self.db, farm_id)
        if not edges:
            return 0
        rows = await iot_down.claim_commands(
            self.db, [farm_id], ttl_s=self._ttl, again_s=self._again, command_id=command_id
        )
        return await self._commands(rows, edges)

    async def config(self, farm_id: str, version: int | None = None) -> int:
        """Publish the farm's config to its IoT edges that need it; the publishes made."""
        need = await iot_down.farms_needing_config(
            self.db, again_s=self._again, farm_id=farm_id, version=version
        )
        if not need:
            return 0
        version = await downlink.farm_version(self.db, farm_id)
        edges = await iot_down.claim_config(self.db, farm_id, version, again_s=self._again)
        done = 0
        for edge in edges:  # each edge its own slice: the rooms it serves
            push = build_config(await downlink.snapshot(self.db, farm_id, edge["id"]))
            payload = push.model_dump_json().encode()
            done += await self._publish("config", edge["farm_id"], edge["id"], payload)
        return done

    async def catch_up(self) -> int:
        """Everything due on every IoT edge: pending commands not published (or published
        ``iot_republish_s`` ago) and config not applied; the publishes made."""
        edges = await iot_down.iot_edges(self.db)
        if not edges:
            return 0
        farms = sorted({e["farm_id"] for e in edges})
        done = 0
        while True:
            rows = await iot_down.claim_commands(
                self.db, farms, ttl_s=self._ttl, again_s=self._again
            )
            done += await self._commands(rows, edges)
            if len(rows) < 500:
                break
        for farm_id in await iot_down.farms_needing_config(self.db, again_s=self._again):
            done += await self.config(farm_id)
        return done

    async def _commands(self, rows: list[dict[str, Any]], edges: list[dict[str, Any]]) -> int:
        by_farm: dict[str, list[str]] = defaultdict(list)
        for edge in edges:
            by_farm[edge["farm_id"]].append(edge["id"])
        done = 0
        for row in rows:
            payload = cloud_command(row, self._ttl).model_dump_json().encode()
            for edge_id in by_farm.get(row["farm_id"], ()):
                if edge_id == row.get("serving_edge"):  # only the edge serving its room
                    done += await self._publish("command", row["farm_id"], edge_id, payload)
        return done

    async def _publish(self, kind: Kind, farm_id: str, edge_id: str, payload: bytes) -> bool:
        topic = commands_topic(farm_id, edge_id)
        if len(payload) > MAX_MESSAGE_BYTES:
            self.metric.labels(kind, "too_large").inc()
            log.warning("edge %s: the %s is %d bytes, over AWS IoT's limit; it reaches the edge"
                        " over the WebSocket or polling only", edge_id, kind, len(payload))
            return False
        try:
            await asyncio.to_thread(self.client.publish, topic=topic, qos=1, payload=payload)
        except Exception as exc:  # AWS refused, the network, a stand-in's error: all the same
            self.failed += 1
            self.metric.labels(kind, "failed").inc()
            log.warning("edge %s: could not publish the %s on %s (published again by the sweep"
                        " in %.0f s): %s", edge_id, kind, topic, self._again, exc)
            return False
        self.published += 1
        self.metric.labels(kind, "published").inc()
        log.debug("edge %s: %s published on %s", edge_id, kind, topic)
        return True

