"""Load generators in their own processes: simulated sensors publishing valid telemetry (flat out
or paced) and actuators that ack their commands, each process driven over a pipe.

Protocol with the parent: the child connects every client, sends ``{"ready": …}``, waits for
``"go"``, runs until its message count is sent, its duration is over or ``"stop"`` arrives and
sends its result dict (a flat-out child then stays connected until ``"stop"``). Children are
spawned, not forked: the parent runs an event loop and the store's writer thread, neither of which
survives a fork.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import aiomqtt

from bench.site import Login

_POLL_S = 0.05


# ---- the parent's side ------------------------------------------------------------------------

class Worker:
    """One spawned child running ``target(conn, *args)``; ``close`` always reaps it."""

    def __init__(self, target: Callable[..., None], *args: Any, name: str) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self._conn, child = ctx.Pipe()
        self._child_conn = child
        self.process = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)

    def start(self) -> None:
        self.process.start()
        self._child_conn.close()  # the child owns its end now; EOF reaches us if it dies

    def send(self, message: Any) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(message)

    def _recv(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s")
        return self._conn.recv()

    async def recv(self, timeout: float) -> Any:
        """The child's next message; TimeoutError, or EOFError if the child died."""
        message = await asyncio.to_thread(self._recv, timeout)
        if isinstance(message, dict) and "error" in message:
            raise RuntimeError(f"{self.name} failed: {message['error']}")
        return message

    def close(self, grace_s: float = 5.0) -> None:
        self.send("stop")
        self.process.join(grace_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()


class Workers:
    """Several workers started together, made ready together and released with one ``go``."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    def __enter__(self) -> Workers:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.close()

    async def ready(self, timeout: float = 120.0) -> list[Any]:
        return list(await asyncio.gather(*(w.recv(timeout) for w in self.workers)))

    def go(self) -> float:
        """Release every worker; returns the monotonic time of the release."""
        at = time.monotonic()
        for worker in self.workers:
            worker.send("go")
        return at

    def stop(self) -> None:
        for worker in self.workers:
            worker.send("stop")

    async def results(self, timeout: float) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.recv(timeout) for w in self.workers)))


# ---- the child's side -------------------------------------------------------------------------

@dataclass
class LoadSpec:
    """What one load process does. Either ``count`` (messages per sensor, each sent as soon as
    the previous one's PUBACK is back) or ``interval_s`` (one message per sensor per interval,
    phases spread evenly) with ``duration_s`` (or until "stop")."""

    name: str
    host: str
    port: int
    farm_id: str
    sensors: list[Login]
    actuators: list[Login] = field(default_factory=list)
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # room → metric → center
    count: int | None = None
    interval_s: float | None = None
    duration_s: float | None = None
    qos: int = 1
    connect_concurrency: int = 8
    seed: int = 1


def topic(farm_id: str, room_id: str, kind: str, device_id: str) -> str:
    return f"farm/{farm_id}/room/{room_id}/{kind}/{device_id}"


def telemetry_payload(device_id: str, center: dict[str, float], rng: random.Random) -> bytes:
    """A valid sensor reading near ``center`` (±1 %), stamped now with microseconds (so every
    reading of a device has its own timestamp and none is taken for a redelivery)."""
    data = {metric: round(value * (1 + rng.uniform(-0.01, 0.01)), 2)
            for metric, value in center.items()}
    doc = {"device_id": device_id,
           "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"), "data": data}
    return json.dumps(doc, separators=(",", ":")).encode()


def client_for(spec: LoadSpec, login: Login) -> aiomqtt.Client:
    return aiomqtt.Client(
        spec.host, spec.port, username=login.device_id, password=login.password,
        identifier=f"{login.device_id}.{spec.farm_id}", keepalive=60, timeout=60,
    )


async def connect_all(
    stack: contextlib.AsyncExitStack, spec: LoadSpec, logins: list[Login]
) -> list[aiomqtt.Client]:
    """Connect every login, a few at a time (the broker verifies argon2 hashes one by one)."""
    gate = asyncio.Semaphore(spec.connect_concurrency)

    async def one(login: Login) -> aiomqtt.Client:
        async with gate:
            return await stack.enter_async_context(client_for(spec, login))

    return list(await asyncio.gather(*(one(login) for login in logins)))


async def ack_commands(client: aiomqtt.Client, spec: LoadSpec, login: Login,
                       counter: list[int]) -> None:
    """An actuator that acks every command with its new state, like firmware_sim's nodes
    (already subscribed to its command topic: see ``subscribe_commands``)."""
    ack_topic = topic(spec.farm_id, login.room_id, "ack", login.device_id)
    async for message in client.messages:
        try:
            command = json.loads(bytes(message.payload))  # type: ignore[arg-type]
            cid, action = command["command_id"], command.get("action")
        except (ValueError, TypeError, KeyError):
            continue
        ack = {"command_id": cid, "status": "ok", "device_id": login.device_id,
               "state": {"on": action == "on"}}
        await client.publish(ack_topic, json.dumps(ack).encode(), qos=1)
        counter[0] += 1


async def subscribe_commands(
    clients: list[aiomqtt.Client], spec: LoadSpec, logins: list[Login]
) -> None:
    # Before "ready": the broker's subscription map stays the same while anything is measured.
    for client, login in zip(clients, logins, strict=True):
        await client.subscribe(
            topic(spec.farm_id, login.room_id, "command", login.device_id), qos=1
        )


async def wait_for_go(conn: Connection) -> None:
    while not conn.poll():
        await asyncio.sleep(_POLL_S)
    message = conn.recv()
    if message != "go":
        raise RuntimeError(f"expected 'go', got {message!r}")


async def wait_for_stop(conn: Connection, deadline: float | None) -> None:
    while deadline is None or time.monotonic() < deadline:
        if conn.poll():
            with contextlib.suppress(EOFError):
                conn.recv()
            return
        await asyncio.sleep(_POLL_S)


async def _publish_loop(
    client: aiomqtt.Client, spec: LoadSpec, login: Login, index: int, stats: dict[str, Any],
    stopped: asyncio.Event,
) -> None:
    rng = random.Random(f"{spec.seed}:{login.device_id}")
    center = spec.values.get(login.room_id, {"temperature_c": 18.0, "humidity_pct": 88.0})
    tel_topic = topic(spec.farm_id, login.room_id, "telemetry", login.device_id)
    if spec.interval_s is None:  # flat out: the next as soon as this one is acked
        assert spec.count is not None
        for _ in range(spec.count):
            await _publish(client, tel_topic, telemetry_payload(login.device_id, center, rng),
                           spec.qos, stats)
        return
    phase = spec.interval_s * index / max(1, len(spec.sensors))
    due = time.monotonic() + phase
    while not stopped.is_set():
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if stopped.is_set():
            return
        await _publish(client, tel_topic, telemetry_payload(login.device_id, center, rng),
                       spec.qos, stats)
        due += spec.interval_s
        if due < time.monotonic() - spec.interval_s:  # fell behind: skip, don't burst
            stats["late"] += 1
            due = time.monotonic()


async def _publish(client: aiomqtt.Client, where: str, payload: bytes, qos: int,
                   stats: dict[str, Any]) -> None:
    try:
        await client.publish(where, payload, qos=qos)
    except aiomqtt.MqttError:
        stats["errors"] += 1
        return
    stats["sent"] += 1
    stats["last_at"] = time.monotonic()


async def _load_main(conn: Connection, spec: LoadSpec) -> None:
    stats: dict[str, Any] = {"name": spec.name, "sent": 0, "errors": 0, "late": 0,
                             "last_at": None}
    acks = [0]
    async with contextlib.AsyncExitStack() as stack:
        sensor_clients = await connect_all(stack, spec, spec.sensors)
        actuator_clients = await connect_all(stack, spec, spec.actuators)
        await subscribe_commands(actuator_clients, spec, spec.actuators)
        ackers = [asyncio.create_task(ack_commands(c, spec, login, acks))
                  for c, login in zip(actuator_clients, spec.actuators, strict=True)]
        conn.send({"ready": spec.name, "clients": len(sensor_clients) + len(actuator_clients)})
        await wait_for_go(conn)
        stats["go_at"] = time.monotonic()
        stopped = asyncio.Event()
        publishers = [
            asyncio.create_task(_publish_loop(c, spec, login, i, stats, stopped))
            for i, (c, login) in enumerate(zip(sensor_clients, spec.sensors, strict=True))
        ]
        if spec.interval_s is None:
            # Flat out: report when every count is sent, but stay connected (and acking) until
            # the parent says stop: a client leaving mid-run would change the broker's
            # subscription map while other processes are still being measured (and plain amqtt
            # 0.12 loses the message it is broadcasting when that happens).
            await asyncio.gather(*publishers)
            stats["done_at"] = time.monotonic()
            stats["acks"] = acks[0]
            conn.send(stats)
            await wait_for_stop(conn, None)
        else:
            deadline = None if spec.duration_s is None else time.monotonic() + spec.duration_s
            await wait_for_stop(conn, deadline)
            stats["done_at"] = time.monotonic()
        stopped.set()
        for task in [*publishers, *ackers]:
            task.cancel()
        await asyncio.gather(*publishers, *ackers, return_exceptions=True)
        stats["acks"] = acks[0]
    if spec.interval_s is not None:
        conn.send(stats)


def run_load(conn: Connection, spec: LoadSpec) -> None:
    """Process entry point (see ``Worker``)."""
    try:
        asyncio.run(_load_main(conn, spec))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` dealt round-robin into ``parts`` lists."""
    return [items[i::parts] for i in range(parts)]
