"""Edge ingest throughput at QoS 1 against the raw broker rate, measured in the same run.

Publisher processes (one per room, each with its sensors and acking actuators) send a fixed number
of valid readings as fast as their PUBACKs allow. Per broker (embedded amqtt, then a private
Mosquitto with the edge in external mode) and per round it times, from "go":
  raw   the same broker with a null subscriber (the edge's MQTT client, shared.mqtt_client, as
        the edge user, that counts);
  edge  the whole EdgeApp: every reading validated, evaluated by the automation and committed to
        SQLite (the clock stops when the last row is committed).
Raw and edge runs alternate so that background noise on the machine hits both alike. Once every
reading is evaluated the bench flushes the store's current group (an urgent no-op write) rather
than wait out store.commit_interval_ms, so the rate is not diluted by the group-commit timer.
Both runs use the same publisher processes, payloads and QoS. "cpu us/msg" is this process's CPU
time (all threads: broker when embedded, subscriber or whole edge) per message: on a shared
machine it is steadier than the rates.

    .venv/bin/python -m bench.edge_ingest [--quick] [--rounds N] [--profile]
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt

from bench.load import LoadSpec, Worker, Workers, run_load
from bench.report import RESULTS_DIR, Target, print_table, verdict, write_json
from bench.site import Mosquitto, RoomSpec, Site, band_center, free_port, write_site
from edge.app import EdgeApp
from edge.broker import embedded_broker
from edge.config import load_config
from edge.credentials import edge_login
from edge.ingest import Inbox, messages
from shared.mqtt_client import MqttClient
from shared.topics import UPLINK_KINDS, subscription

log = logging.getLogger(__name__)

NAME = "edge_ingest"
TARGET_RATIO = 0.70
IDLE_TIMEOUT_S = 20.0  # no progress for this long ends a run as incomplete


def rooms(publishers: int, sensors: int) -> list[RoomSpec]:
    return [
        RoomSpec(f"r{i}", sensors,
                 actuators={f"r{i}-hum": "humidifier", f"r{i}-fan": "exhaust_fan"})
        for i in range(publishers)
    ]


def load_specs(site: Site, port: int, count: int) -> list[LoadSpec]:
    values = {r.id: band_center(r.species, r.stage) for r in site.rooms}
    return [
        LoadSpec(name=f"pub-{room.id}", host="127.0.0.1", port=port, farm_id=site.farm_id,
                 sensors=site.sensors(room.id), actuators=site.actuators(room.id),
                 values=values, count=count)
        for room in site.rooms
    ]


async def wait_count(read: Any, expected: int) -> tuple[float | None, int]:
    """Poll ``read()`` until it reaches ``expected``; (monotonic time reached or None, last)."""
    last, last_change = -1, time.monotonic()
    while True:
        value = read()
        now = time.monotonic()
        if value >= expected:
            return now, value
        if value != last:
            last, last_change = value, now
        elif now - last_change > IDLE_TIMEOUT_S:
            return None, value
        await asyncio.sleep(0.01)


async def drive(site: Site, port: int, count: int, counters: dict[str, Any],
                flush: Any = None) -> dict[str, Any]:
    """Start the publishers, release them, and time every counter in ``counters`` (in order) to
    the total; ``flush`` is awaited once the first counter is there."""
    specs = load_specs(site, port, count)
    expected = sum(len(s.sensors) for s in specs) * count
    with Workers([Worker(run_load, s, name=s.name) for s in specs]) as workers:
        await workers.ready()
        cpu0 = time.process_time()
        go = workers.go()
        reached = {}
        for name, read in counters.items():
            reached[name] = await wait_count(read, expected)
            if flush is not None:
                await flush()
                flush = None
        cpu = time.process_time() - cpu0  # this process: broker (embedded) + subscriber / edge
        results = await workers.results(timeout=IDLE_TIMEOUT_S * 3)
    sent = sum(r["sent"] for r in results)
    last_sent = max((r["last_at"] for r in results if r["last_at"]), default=go)
    out: dict[str, Any] = {
        "messages": expected, "sent": sent, "publish_errors": sum(r["errors"] for r in results),
        "publish_rate": sent / (last_sent - go) if last_sent > go else None,
        "cpu_us_per_message": 1e6 * cpu / expected,
    }
    for name, (at, value) in reached.items():
        out[f"{name}_count"] = value
        out[f"{name}_s"] = None if at is None else at - go
        out[f"{name}_rate"] = None if at is None else value / (at - go)
    return out


async def raw_run(site: Site, host: str, port: int, count: int) -> dict[str, Any]:
    """The broker alone: a subscriber as the edge user that only counts telemetry."""
    username, password = edge_login(site.settings)
    received = [0]

    inbox = Inbox()

    async def null_subscriber(client: aiomqtt.Client) -> None:
        async for message in messages(client, inbox):  # the edge's receive loop, minus the work
            if "/telemetry/" in message.topic.value:
                received[0] += 1

    # The edge's client class: its socket handling is part of the receive path measured here.
    async with MqttClient(host, port, username=username, password=password,
                          identifier=f"bench-null-{uuid.uuid4().hex[:8]}",
                          clean_session=False, keepalive=30,
                          queue_type=inbox.queue_type) as client:
        for kind in UPLINK_KINDS:
            await client.subscribe(subscription(site.farm_id, kind), qos=1)  # type: ignore[arg-type]
        task = asyncio.create_task(null_subscriber(client))
        try:
            result = await drive(site, port, count, {"received": lambda: received[0]})
        finally:
            task.cancel()
    result["rate"] = result["received_rate"]
    return result


async def raw_embedded(site: Site, count: int) -> dict[str, Any]:
    broker = embedded_broker(site.settings)  # the edge's own broker setup: auth + ACL plugins
    await broker.start()
    try:
        return await raw_run(site, broker.host, broker.port, count)
    finally:
        await broker.stop()


def _noop(conn: Any) -> None:
    return None


async def edge_run(site: Site, count: int, run_id: str,
                   profile: cProfile.Profile | None = None, *,
                   durable_acks: bool = True) -> dict[str, Any]:
    settings = load_config(site.config_path)
    settings.data_dir = Path(f"data-{run_id}")  # a fresh store for every run
    settings.broker.durable_acks = durable_acks
    app = EdgeApp(settings)
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop), name="bench-edge")
    try:
        async with asyncio.timeout(30):
            await app.broker_connected.wait()
        await app.ingest.subscribed.wait()
        _, port = app.mqtt_address()
        if profile is not None:
            profile.enable()
        stats = app.ingest.stats
        result = await drive(site, port, count, {
            "evaluated": lambda: stats.readings,  # validated and through the automation
            "committed": lambda: stats.stored,
        }, flush=lambda: app.db.write(_noop, urgent=True))
        if profile is not None:
            profile.disable()
        result.update(
            rate=result["committed_rate"], quarantined=stats.quarantined,
            duplicates=stats.duplicates, evaluations=app.automation.evaluations,
            commands=app.commands.stats.sent, transactions=app.db.stats.transactions,
            max_batch=app.db.stats.max_batch, db_items=app.db.stats.items,
        )
        return result
    finally:
        stop.set()
        await runner


async def run(quick: bool, rounds: int, profile: bool) -> dict[str, Any]:
    publishers, sensors = 4, 10
    count = 100 if quick else 400
    runs: list[dict[str, Any]] = []
    profiles = {"amqtt": cProfile.Profile(), "mosquitto": cProfile.Profile()} if profile else {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        base = Path(tmp)
        site = write_site(base / "amqtt", rooms(publishers, sensors),
                          farm_id=f"bench{uuid.uuid4().hex[:6]}")
        for n in range(rounds):
            print(f"  amqtt round {n + 1}/{rounds}: raw …", flush=True)
            runs.append({"broker": "amqtt", "kind": "raw", "round": n + 1,
                         **await raw_embedded(site, count)})
            print(f"  amqtt round {n + 1}/{rounds}: edge …", flush=True)
            runs.append({"broker": "amqtt", "kind": "edge", "round": n + 1,
                         **await edge_run(site, count, f"a{n}", profiles.get("amqtt"))})
            # Before durable acks, in the same run: the broker acknowledged on receipt.
            print(f"  amqtt round {n + 1}/{rounds}: edge, ack on receipt …", flush=True)
            runs.append({"broker": "amqtt", "kind": "edge (ack on receipt)", "round": n + 1,
                         **await edge_run(site, count, f"r{n}", durable_acks=False)})
        if Mosquitto.available():
            port = free_port()
            msite = write_site(base / "mosq", rooms(publishers, sensors),
                               farm_id=f"bench{uuid.uuid4().hex[:6]}",
                               broker_url=f"mqtt://127.0.0.1:{port}")
            for n in range(rounds):
                print(f"  mosquitto round {n + 1}/{rounds}: raw …", flush=True)
                with Mosquitto(base / f"mosq-{n}-raw", msite.secrets, msite.farm_id, port):
                    raw = await raw_run(msite, "127.0.0.1", port, count)
                runs.append({"broker": "mosquitto", "kind": "raw", "round": n + 1, **raw})
                print(f"  mosquitto round {n + 1}/{rounds}: edge …", flush=True)
                with Mosquitto(base / f"mosq-{n}-edge", msite.secrets, msite.farm_id, port):
                    edge = await edge_run(msite, count, f"m{n}", profiles.get("mosquitto"))
                runs.append({"broker": "mosquitto", "kind": "edge", "round": n + 1, **edge})
    for broker, prof in profiles.items():
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        print(f"\n==== cProfile of the edge process, {broker} runs ====\n{out.getvalue()}")
    return summarize(runs, publishers=publishers, sensors=sensors, count=count, rounds=rounds,
                     quick=quick)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    brokers: dict[str, dict[str, Any]] = {}
    targets: list[Target] = []
    for broker in ("amqtt", "mosquitto"):
        raw = _median([r["rate"] for r in runs if r["broker"] == broker and r["kind"] == "raw"])
        edge = _median([r["rate"] for r in runs if r["broker"] == broker and r["kind"] == "edge"])
        if raw is None and edge is None:
            continue
        ratio = edge / raw if raw and edge else None
        brokers[broker] = {"raw_rate": raw, "edge_rate": edge, "ratio": ratio}
        receipt = _median([r["rate"] for r in runs if r["broker"] == broker
                           and r["kind"] == "edge (ack on receipt)"])
        if receipt is not None:
            brokers[broker]["ack_on_receipt_rate"] = receipt
            brokers[broker]["ack_on_receipt_ratio"] = receipt / raw if raw else None
        targets.append(Target(f"edge / raw ({broker})", ratio, ">=", TARGET_RATIO))
    return {"params": params, "runs": runs, "brokers": brokers, "targets": targets}


def print_result(result: dict[str, Any]) -> None:
    p = result["params"]
    rows = [
        [r["broker"], r["kind"], r["round"], r["messages"], r.get("received_count")
         or r.get("committed_count"), r.get("received_s") or r.get("committed_s"), r["rate"],
         r.get("evaluated_rate"), r["publish_rate"], r.get("cpu_us_per_message")]
        for r in result["runs"]
    ]
    print_table(
        f"Edge ingest, QoS 1: {p['publishers']} publisher processes x {p['sensors']} sensors x "
        f"{p['count']} readings",
        ["broker", "run", "round", "sent", "done", "seconds", "readings/s", "evaluated/s",
         "publish/s", "cpu us/msg"],
        rows,
    )
    summary = [
        [broker, b["raw_rate"], b["edge_rate"],
         None if b["ratio"] is None else f"{100 * b['ratio']:.0f} %",
         f">= {100 * TARGET_RATIO:.0f} %", verdict(t.met)]
        for (broker, b), t in zip(result["brokers"].items(), result["targets"], strict=True)
    ]
    for broker, b in result["brokers"].items():
        if b.get("ack_on_receipt_rate") is not None:
            ratio = b["ack_on_receipt_ratio"]
            summary.append([f"{broker}, ack on receipt (before)", b["raw_rate"],
                            b["ack_on_receipt_rate"],
                            None if ratio is None else f"{100 * ratio:.0f} %", "(reference)", ""])
    print_table("Edge vs raw broker (median of rounds); embedded edge acks once committed",
                ["broker", "raw msg/s", "edge readings/s", "edge/raw", "target", "verdict"],
                summary)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (fewer readings, 1 round)")
    parser.add_argument("--rounds", type=int, default=None, help="raw/edge pairs per broker")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the embedded edge runs and print the top functions")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the JSON goes (default bench/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rounds = args.rounds or (1 if args.quick else 3)
    print(f"bench {NAME}: {'quick' if args.quick else 'full'} run, {rounds} round(s)", flush=True)
    result = asyncio.run(run(args.quick, rounds, args.profile))
    print_result(result)
    write_json(NAME, result, args.results_dir)
    return result


if __name__ == "__main__":
    main()
