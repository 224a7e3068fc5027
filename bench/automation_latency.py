"""Automation latency: a sensor publishes a reading that crosses a threshold → the actuator receives
the edge's command, under a steady background load of valid telemetry from other devices.

The edge runs in this process: with its embedded broker (the target), then for comparison in
external mode against a private Mosquitto. Background sensors (with acking actuators in their
rooms) publish from separate processes at a fixed total rate. A probe process holds a sensor and a
humidifier (safety min_on/min_off = 0, so every crossing switches it): it publishes humidity below
the RH rule's ``on_below``, times the "on" command's arrival at the humidifier's client, acks, then
does the same above ``off_above`` for "off", and so on. Both timestamps come from one process clock.

    .venv/bin/python -m bench.automation_latency [--quick] [--samples N] [--rate MSG_PER_S]
        [--brokers amqtt,mosquitto]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiomqtt

from bench.load import (
    LoadSpec,
    Worker,
    Workers,
    client_for,
    run_load,
    split,
    topic,
    wait_for_go,
    wait_for_stop,
)
from bench.report import Target, print_table, summarize, verdict, write_json
from bench.site import Login, Mosquitto, RoomSpec, Site, band_center, free_port, write_site
from edge.app import EdgeApp
from edge.config import load_config
from shared.profiles import rules_for
from shared.rules import ThresholdRule

log = logging.getLogger(__name__)

NAME = "automation_latency"
TARGET_P99_MS = 25.0
PROBE_ROOM = "probe"
PROBE_SENSOR = "probe-s000"
PROBE_ACTUATOR = "probe-hum"
WARMUP_SAMPLES = 10
MAX_MISSED_IN_A_ROW = 5


@dataclass
class ProbeSpec:
    host: str
    port: int
    farm_id: str
    sensor: Login
    actuator: Login
    center: dict[str, float]
    on_below: float
    off_above: float
    samples: int
    gap_s: tuple[float, float] = (0.02, 0.06)
    timeout_s: float = 2.0


async def _probe_main(conn: Connection, spec: ProbeSpec) -> None:
    load = LoadSpec(name="probe", host=spec.host, port=spec.port, farm_id=spec.farm_id,
                    sensors=[])
    loop = asyncio.get_running_loop()
    pending: dict[str, Any] = {}  # "action", "after" (wall clock), "future"
    rng = random.Random(7)
    tel_topic = topic(spec.farm_id, spec.sensor.room_id, "telemetry", spec.sensor.device_id)
    cmd_topic = topic(spec.farm_id, spec.actuator.room_id, "command", spec.actuator.device_id)
    ack_topic = topic(spec.farm_id, spec.actuator.room_id, "ack", spec.actuator.device_id)

    async def actuator_loop(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            arrived = time.monotonic()
            try:
                command = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                created = datetime.fromisoformat(command["timestamp"]).timestamp()
                cid, action = command["command_id"], command["action"]
            except (ValueError, TypeError, KeyError):
                continue
            future = pending.get("future")
            # Only a command the edge created after the probe reading went out counts (a retried
            # boot-time command may arrive at any moment).
            if (future is not None and not future.done() and action == pending["action"]
                    and created >= pending["after"]):
                future.set_result(arrived)
            ack = {"command_id": cid, "status": "ok", "device_id": spec.actuator.device_id,
                   "state": {"on": action == "on"}}
            await client.publish(ack_topic, json.dumps(ack).encode(), qos=1)

    async with client_for(load, spec.sensor) as sensor, \
            client_for(load, spec.actuator) as actuator:
        await actuator.subscribe(cmd_topic, qos=1)
        listener = asyncio.create_task(actuator_loop(actuator))
        conn.send({"ready": "probe"})
        await wait_for_go(conn)
        latencies: list[float] = []
        trace: list[tuple[float, float, float]] = []  # monotonic: sent, PUBACK, command
        missed = streak = 0
        want = "on"
        for i in range(spec.samples + WARMUP_SAMPLES):
            if streak >= MAX_MISSED_IN_A_ROW:
                break  # the edge is not reacting at all: say so rather than time out 300 times
            data = dict(spec.center)
            data["humidity_pct"] = (spec.on_below - 3.0) if want == "on" else (spec.off_above + 2)
            future: asyncio.Future[float] = loop.create_future()
            pending.update(action=want, after=time.time() - 0.001, future=future)
            stamp = datetime.now(UTC).isoformat(timespec="microseconds")
            payload = json.dumps({"device_id": spec.sensor.device_id, "timestamp": stamp,
                                  "data": data}).encode()
            sent = time.monotonic()
            await sensor.publish(tel_topic, payload, qos=1)
            acked = time.monotonic()
            try:
                arrived = await asyncio.wait_for(future, spec.timeout_s)
            except TimeoutError:
                missed += 1  # keep asking for the same state: the edge never switched
                streak += 1
            else:
                streak = 0
                if i >= WARMUP_SAMPLES:
                    latencies.append(arrived - sent)
                    trace.append((sent, acked, arrived))
                want = "off" if want == "on" else "on"
            await asyncio.sleep(rng.uniform(*spec.gap_s))
        conn.send({"latencies_s": latencies, "missed": missed, "trace": trace})
        await wait_for_stop(conn, None)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await listener


def run_probe(conn: Connection, spec: ProbeSpec) -> None:
    """Process entry point (see ``bench.load.Worker``)."""
    try:
        asyncio.run(_probe_main(conn, spec))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def rooms(background_rooms: int, sensors_per_room: int) -> list[RoomSpec]:
    out = [
        RoomSpec(f"bg{i}", sensors_per_room,
                 actuators={f"bg{i}-hum": "humidifier", f"bg{i}-fan": "exhaust_fan"})
        for i in range(background_rooms)
    ]
    # The profile's RH rule waits for its condition to hold (for_s) and the humidifier's default
    # safety holds it on/off for minutes: both are control policy, not latency. The probe room
    # replaces the rule with the same thresholds and no hold time, and lifts min on/off.
    profile_rule = next(r for r in rules_for(PROBE_ROOM, "oyster", "fruiting",
                                             {"humidifier": PROBE_ACTUATOR})
                        if isinstance(r, ThresholdRule) and r.metric == "humidity_pct")
    rule = profile_rule.model_copy(update={"for_s": 0, "source": "user"})
    out.append(RoomSpec(PROBE_ROOM, 1, actuators={PROBE_ACTUATOR: "humidifier"},
                        safety={PROBE_ACTUATOR: {"min_on_s": 0, "min_off_s": 0}},
                        rules=[rule.model_dump(mode="json", exclude_none=True)]))
    return out


def rh_rule(app: EdgeApp) -> ThresholdRule:
    for rule in app.automation.rules(PROBE_ROOM):
        if isinstance(rule, ThresholdRule) and rule.metric == "humidity_pct":
            if rule.on_below is None or rule.off_above is None or rule.for_s:
                raise RuntimeError(f"probe rule {rule.id} is not an immediate raise rule")
            return rule
    raise RuntimeError("the probe room has no humidity rule")


BG_ROOMS, BG_SENSORS_PER_ROOM, BG_PROCESSES = 4, 10, 2


async def measure(site: Site, samples: int, rate: float,
                  background_s_max: float) -> dict[str, Any]:
    """One edge (the site's broker mode), its background load and the probe; the figures."""
    interval = BG_ROOMS * BG_SENSORS_PER_ROOM / rate  # each background sensor this often
    app = EdgeApp(load_config(site.config_path))
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop), name="bench-edge")
    try:
        async with asyncio.timeout(30):
            await app.broker_connected.wait()
            await app.ingest.subscribed.wait()
        host, port = app.mqtt_address()
        rule = rh_rule(app)
        values = {r.id: band_center(r.species, r.stage) for r in site.rooms}
        background = [r for r in site.rooms if r.id != PROBE_ROOM]
        sensors = [s for r in background for s in site.sensors(r.id)]
        actuators = [a for r in background for a in site.actuators(r.id)]
        loads = [
            LoadSpec(name=f"bg-{n}", host=host, port=port, farm_id=site.farm_id,
                     sensors=ss, actuators=aa, values=values, interval_s=interval,
                     duration_s=background_s_max, seed=n)
            for n, (ss, aa) in enumerate(zip(split(sensors, BG_PROCESSES),
                                             split(actuators, BG_PROCESSES), strict=True))
        ]
        probe = ProbeSpec(host=host, port=port, farm_id=site.farm_id,
                          sensor=site.login(PROBE_SENSOR), actuator=site.login(PROBE_ACTUATOR),
                          center=values[PROBE_ROOM], on_below=float(rule.on_below or 0),
                          off_above=float(rule.off_above or 0), samples=samples)
        with Workers([Worker(run_load, s, name=s.name) for s in loads]) as bg, \
                Workers([Worker(run_probe, probe, name="probe")]) as prober:
            await asyncio.gather(bg.ready(), prober.ready())
            bg_go = bg.go()
            before = app.ingest.stats.readings
            await asyncio.sleep(2.0)  # let the background load settle
            prober.go()
            (outcome,) = await prober.results(timeout=samples * probe.timeout_s + 60)
            bg.stop()
            bg_results = await bg.results(timeout=30)
            bg_seconds = time.monotonic() - bg_go
        stats = app.ingest.stats
        result = {
            "latency_ms": summarize([x * 1000 for x in outcome["latencies_s"]]),
            # publish → the broker's PUBACK to the probe sensor: the broker's share at ingress
            "puback_ms": summarize([(a - s) * 1000 for s, a, _ in outcome["trace"]]),
            "missed": outcome["missed"],
            "background": {
                "target_rate": rate,
                "sent": sum(r["sent"] for r in bg_results),
                "rate": sum(r["sent"] for r in bg_results) / bg_seconds,
                "late": sum(r["late"] for r in bg_results),
                "errors": sum(r["errors"] for r in bg_results),
                "edge_readings": stats.readings - before,
            },
            "edge": {"quarantined": stats.quarantined, "commands": app.commands.stats.sent,
                     "command_retries": app.commands.stats.retries},
            "rule": {"id": rule.id, "on_below": rule.on_below, "off_above": rule.off_above},
            "samples_ms": [round(x * 1000, 3) for x in outcome["latencies_s"]],
            "trace_monotonic": outcome["trace"],
        }
    finally:
        stop.set()
        await runner
    if result["latency_ms"]["count"] < 0.9 * samples:
        result["error"] = (f"only {result['latency_ms']['count']} of {samples} samples "
                           f"({result['missed']} probes got no command within 2 s)")
    return result


async def run(samples: int, rate: float, brokers: list[str]) -> dict[str, Any]:
    background_s_max = samples * 2.0 + 120
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        for broker in brokers:
            print(f"  {broker}: {samples} probes …", flush=True)
            farm_id = f"bench{uuid.uuid4().hex[:6]}"
            layout = rooms(BG_ROOMS, BG_SENSORS_PER_ROOM)
            if broker == "amqtt":
                site = write_site(Path(tmp) / broker, layout, farm_id=farm_id)
                runs[broker] = await measure(site, samples, rate, background_s_max)
                continue
            if not Mosquitto.available():
                print("  mosquitto not installed: skipped", flush=True)
                continue
            port = free_port()
            site = write_site(Path(tmp) / broker, layout, farm_id=farm_id,
                              broker_url=f"mqtt://127.0.0.1:{port}")
            with Mosquitto(Path(tmp) / "mosquitto", site.secrets, farm_id, port):
                runs[broker] = await measure(site, samples, rate, background_s_max)
    head = runs.get("amqtt") or next(iter(runs.values()))
    p99 = None if "error" in head else head["latency_ms"].get("p99")
    label = "embedded amqtt" if "amqtt" in runs else "mosquitto"
    return {
        "params": {"samples": samples, "background_rate": rate, "background_rooms": BG_ROOMS,
                   "background_sensors": BG_ROOMS * BG_SENSORS_PER_ROOM,
                   "load_processes": BG_PROCESSES, "brokers": list(runs)},
        "runs": runs,
        "targets": [Target(f"p99 reading → command ({label})", p99, "<", TARGET_P99_MS, "ms")],
        "errors": {b: r["error"] for b, r in runs.items() if "error" in r},
    }


def print_result(result: dict[str, Any]) -> None:
    rows = []
    for broker, run_ in result["runs"].items():
        lat, bg = run_["latency_ms"], run_["background"]
        met = None if "error" in run_ else (lat.get("p99", float("inf")) < TARGET_P99_MS)
        rows.append([broker, f"{bg['rate']:.0f}", lat["count"], run_["missed"], lat.get("p50"),
                     lat.get("p95"), lat.get("p99"), lat.get("max"),
                     run_["puback_ms"].get("p50"), f"< {TARGET_P99_MS:g} ms", verdict(met)])
    print_table(
        "Automation latency, reading published → actuator has its command",
        ["broker", "bg msg/s", "samples", "missed", "p50 ms", "p95 ms", "p99 ms", "max ms",
         "PUBACK p50", "target p99", "verdict"],
        rows,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.automation_latency",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (60 samples)")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--rate", type=float, default=200.0, help="background msg/s")
    parser.add_argument("--brokers", default=None,
                        help="amqtt (embedded, the target) and/or mosquitto (external); "
                             "default: both (quick: amqtt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    samples = args.samples or (60 if args.quick else 300)
    brokers = (args.brokers or ("amqtt" if args.quick else "amqtt,mosquitto")).split(",")
    print(f"bench {NAME}: {samples} samples at {args.rate:g} msg/s background", flush=True)
    result = asyncio.run(run(samples, args.rate, brokers))
    print_result(result)
    write_json(NAME, result)
    if result["errors"]:
        raise RuntimeError("; ".join(f"{b}: {e}" for b, e in result["errors"].items()))
    return result


if __name__ == "__main__":
    main()
