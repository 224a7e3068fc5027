"""Run the built image as a deployment would and check it end to end: a cloud container on a
throwaway PostgreSQL database answers /health (and the image's own HEALTHCHECK passes), an edge
container set up by `smartfarm edge init` (as compose's edge-init does) and registered over REST
syncs the readings of a simulator container into that database.

Standard library only: it runs on the host's python3, outside any venv. Called by
deploy/image/build-and-check.sh (which finds the podman options this machine needs).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

APP_UID = 10001  # the image's `smartfarm` user (USER 10001:10001 in the Dockerfile)
OWNER = "owner@image-check.test"


class CheckFailed(Exception):
    """The image did not do what a deployment needs; the message says what."""


class ContainerExited(CheckFailed):
    """A container that should be running is not: no use waiting any longer."""


def log(message: str) -> None:
    print(f"image-check: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def until(what: str, probe: Callable[[], Any], timeout: float,
          alive: Callable[[], None] = lambda: None) -> Any:
    """Poll ``probe`` until it returns something truthy; CheckFailed naming ``what`` if not.
    ``alive`` raises when waiting longer is of no use (a container exited)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        alive()
        try:
            found = probe()
        except (OSError, CheckFailed) as exc:  # not up yet
            found, last = None, exc
        if found:
            return found
        time.sleep(0.5)
    raise CheckFailed(f"{what}: nothing after {timeout:.0f} s (last: {last})")


def http(method: str, url: str, body: object = None, token: str = "") -> Any:
    """One JSON request; the decoded answer, or CheckFailed with the status and body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (http only)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            text = resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise CheckFailed(f"{method} {url}: {exc.code} {exc.read().decode()[:500]}") from exc
    return json.loads(text) if text else None


class Podman:
    """The podman command line with this machine's options, and the containers it started."""

    def __init__(self, command: str, run_opts: str, image: str) -> None:
        self.command = shlex.split(command)
        self.run_opts = shlex.split(run_opts)
        self.image = image
        self.names: list[str] = []
        self.prefix = f"smartfarm-check-{secrets.token_hex(3)}"

    def _call(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        # podman with arguments this script builds (no shell): S603 does not apply.
        return subprocess.run([*self.command, *args], capture_output=True, text=True,  # noqa: S603
                              check=False)

    def _run(self, args: list[str], *, check: bool = True) -> str:
        result = self._call(args)
        if check and result.returncode != 0:
            raise CheckFailed(f"podman {shlex.join(args)}: exit {result.returncode}: "
                              f"{result.stderr.strip()[-1500:]}")
        return result.stdout

    def once(self, args: list[str], *, entrypoint: str | None = None,
             volumes: tuple[str, ...] = ()) -> str:
        """A one-shot container of the image (host network); its output."""
        opts = ["--entrypoint", entrypoint] if entrypoint else []
        for volume in volumes:
            opts += ["-v", volume]
        return self._run(["run", "--rm", "--network", "host", *self.run_opts, *opts,
                          self.image, *args])

    def start(self, role: str, args: list[str], env: dict[str, str],
              volumes: tuple[str, ...] = ()) -> str:
        """A detached container of the image on the host network; its name."""
        name = f"{self.prefix}-{role}"
        opts: list[str] = []
        for key, value in env.items():
            opts += ["-e", f"{key}={value}"]
        for volume in volumes:
            opts += ["-v", volume]
        self._run(["run", "-d", "--name", name, "--network", "host", *self.run_opts, *opts,
                   self.image, *args])
        self.names.append(name)
        return name

    def exec(self, name: str, args: list[str]) -> str:
        return self._run(["exec", name, *args])

    def healthcheck(self, name: str) -> bool:
        return self._call(["healthcheck", "run", name]).returncode == 0

    def running(self, name: str) -> bool:
        state = self._run(["inspect", "-f", "{{.State.Running}}", name], check=False)
        return state.strip() == "true"

    def all_running(self) -> None:
        for name in self.names:
            if not self.running(name):
                raise ContainerExited(f"container {name} exited")

    def logs(self, name: str) -> str:
        result = self._call(["logs", "--tail", "40", name])
        return result.stdout + result.stderr

    def remove_all(self) -> None:
        for name in reversed(self.names):
            self._call(["rm", "-f", "-t", "10", name])
        self.names.clear()


@contextmanager
def throwaway_database(podman: Podman, admin_dsn: str) -> Iterator[str]:
    """A new database on the server of ``admin_dsn`` (made and dropped with the image's own
    psql, which the image ships for `cloud backup`); yields its URL."""
    name = f"smartfarm_image_{secrets.token_hex(4)}"
    base, _, _ = admin_dsn.partition("?")
    dsn = base.rsplit("/", 1)[0] + "/" + name

    def psql(sql: str) -> None:
        podman.once([admin_dsn, "-v", "ON_ERROR_STOP=1", "-qc", sql], entrypoint="psql")

    psql(f"CREATE DATABASE {name}")
    try:
        yield dsn
    finally:
        podman.remove_all()  # the cloud holds connections: stop it before the drop
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def register(cloud: str, token: str, config: dict[str, Any], edge_id: str) -> str:
    """The edge's farm, rooms and devices and the edge itself, as a farm owner makes them over
    REST; the edge's token (shown once)."""
    farm = config["farm_id"]
    http("POST", f"{cloud}/api/farms", {"id": farm, "name": f"Farm {farm}"}, token)
    for room in config["rooms"]:
        http("POST", f"{cloud}/api/farms/{farm}/rooms",
             {key: room[key] for key in ("id", "name", "species", "stage")}, token)
    for device in config["devices"]:
        body = {key: device[key] for key in ("id", "kind", "actuator") if key in device}
        http("POST", f"{cloud}/api/rooms/{device['room']}/devices?farm_id={farm}", body, token)
    edge = http("POST", f"{cloud}/api/farms/{farm}/edges", {"id": edge_id, "name": "image check"},
                token)
    edge_token: str = edge["token"]
    return edge_token


def check(args: argparse.Namespace) -> None:
    podman = Podman(args.podman, args.run_opts, args.image)
    with ExitStack() as stack:
        dsn = stack.enter_context(throwaway_database(podman, args.database_url))
        log(f"database {dsn.rsplit('/', 1)[1]} made")
        try:
            run(podman, stack, args, dsn)
        except CheckFailed:
            for name in podman.names:
                log(f"---- last lines of {name} ----\n{podman.logs(name)}")
            raise


def run(podman: Podman, stack: ExitStack, args: argparse.Namespace, dsn: str) -> None:
    edge_config: Path = args.edge_config.resolve()
    config = tomllib.loads(edge_config.read_text())
    farm = config["farm_id"]
    sensors = [d["id"] for d in config["devices"] if d["kind"] == "sensor"]
    cloud_port, broker_port, api_port = free_port(), free_port(), free_port()
    cloud = f"http://127.0.0.1:{cloud_port}"
    timeout: float = args.timeout
    started = time.monotonic()

    # ---- the cloud: the image's default process, on a port of our own ----
    cloud_name = podman.start("cloud", ["cloud", "serve", "--host", "127.0.0.1", "--port",
                                        str(cloud_port)], {
        "DATABASE_URL": dsn,
        "SMARTFARM_CLOUD_AUTH__JWT_SECRET": secrets.token_hex(32),
        "SMARTFARM_CLOUD_DATA_DIR": "/var/lib/smartfarm/cloud",
        "SMARTFARM_HEALTH_URL": f"{cloud}/health",
    })
    health = until("cloud /health", lambda: http("GET", f"{cloud}/health"), timeout,
                   podman.all_running)
    log(f"cloud {cloud}/health answered {time.monotonic() - started:.1f} s after start: "
        f"{json.dumps(health)[:200]}")
    if not podman.healthcheck(cloud_name):
        raise CheckFailed("the image's HEALTHCHECK fails in the cloud container")
    log("the image's HEALTHCHECK passes in the cloud container")

    # ---- a farm owner (the CLI in the container) registers the farm and the edge over REST ----
    password = secrets.token_urlsafe(16)
    podman.exec(cloud_name, ["smartfarm", "cloud", "create-user", OWNER, "--password", password])
    token = http("POST", f"{cloud}/api/auth/login",
                 {"email": OWNER, "password": password})["access_token"]
    edge_id = f"{farm}-pi"
    edge_token = register(cloud, token, config, edge_id)
    log(f"edge {edge_id} registered: {len(config['rooms'])} rooms, "
        f"{len(config['devices'])} devices")

    # ---- the edge: credentials by `edge init` (compose's edge-init), then `edge run` ----
    data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="smartfarm-image-")))
    os.chown(data, APP_UID, APP_UID)
    data.chmod(0o750)
    stack.callback(podman.remove_all)  # the containers go before the folder they write to
    volume = f"{data}:/var/lib/smartfarm"
    conf = f"{edge_config}:/etc/smartfarm/edge.toml:ro"
    podman.once(["edge", "init", "/var/lib/smartfarm/edge", "--farm-id", farm, "--force"],
                volumes=(volume,))
    podman.start("edge", ["edge", "run", "--config", "/etc/smartfarm/edge.toml"], {
        "SMARTFARM_EDGE_CLOUD__URL": cloud,
        "SMARTFARM_EDGE_CLOUD__EDGE_ID": edge_id,
        "SMARTFARM_EDGE_CLOUD__TOKEN": edge_token,
        # host network: loopback ports of our own, not the compose file's fixed ones
        "SMARTFARM_EDGE_BROKER__HOST": "127.0.0.1",
        "SMARTFARM_EDGE_BROKER__PORT": str(broker_port),
        "SMARTFARM_EDGE_API__HOST": "127.0.0.1",
        "SMARTFARM_EDGE_API__PORT": str(api_port),
        "SMARTFARM_HEALTH_URL": f"http://127.0.0.1:{api_port}/health",
    }, volumes=(conf, volume))
    until("edge /health", lambda: http("GET", f"http://127.0.0.1:{api_port}/health"), timeout,
          podman.all_running)
    log(f"edge answers /health on :{api_port}, broker on :{broker_port}")

    # ---- the simulated nodes log in to the edge's broker with the passwords edge init wrote ----
    sim = podman.start("sim", ["sim", "--config", "/etc/smartfarm/edge.toml", "--host",
                               "127.0.0.1", "--port", str(broker_port), "--speed", "10"],
                       {}, volumes=(conf, f"{data}:/var/lib/smartfarm:ro"))
    sim_started = time.monotonic()

    def synced() -> dict[str, Any] | None:
        latest = {s: http("GET", f"{cloud}/api/devices/{s}/latest?farm_id={farm}", token=token)
                  for s in sensors}
        if not all(answer["readings"] for answer in latest.values()):
            return None
        edge = http("GET", f"{cloud}/api/edges/{edge_id}?farm_id={farm}", token=token)
        return {"latest": latest, "edge": edge} if edge["high_water"] > 0 else None

    found = until("readings of every sensor synced into the cloud", synced, timeout,
                  podman.all_running)
    log(f"readings of {', '.join(sensors)} in the cloud {time.monotonic() - sim_started:.1f} s "
        f"after the simulator started; edge high_water {found['edge']['high_water']}, "
        f"online {found['edge']['online']}")
    # Straight from PostgreSQL, with the image's psql: the rows are there.
    count = podman.once([dsn, "-tAc", "SELECT count(*) FROM sensor_data"], entrypoint="psql")
    if int(count.strip()) <= 0:
        raise CheckFailed("the API showed readings but sensor_data is empty")
    log(f"sensor_data holds {count.strip()} rows; sim container {sim} running")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--podman", default="podman", help="the podman command and its options")
    parser.add_argument("--run-opts", default="", help="options for every `podman run`")
    parser.add_argument("--edge-config", type=Path, required=True,
                        help="the edge's TOML (deploy/docker/edge/edge.toml)")
    parser.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server to make the throwaway database on (any database of it)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    args = parser.parse_args(argv)
    try:
        check(args)
    except CheckFailed as exc:
        log(f"FAILED: {exc}")
        return 1
    log("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
