"""The `smartfarm` command line: --version, help for every option, config checks that name every
problem by room/device id with the value given and where it came from (a line of the file or an
environment variable), one OK line for a good config, ``--print`` for the full dump."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import smartfarm_cli
from cloud import cli as cloud_cli
from demo import edge_only as demo_edge_only
from demo import with_cloud as demo_with_cloud
from edge import cli as edge_cli
from edge.config import ConfigError, load_config
from edge.site_init import init_site
from firmware_sim import farm as sim_farm
from tests.conftest import free_port

VERSION = version("smartfarm")


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_version_flags_print_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--version"], ["-V"], ["sim", "--version"], ["demo", "-V"]):
        assert smartfarm_cli.main(argv) == 0
        assert capsys.readouterr().out.startswith(f"smartfarm {VERSION} (Python 3.")
    for argv in (["edge", "--version"], ["cloud", "-V"]):
        with pytest.raises(SystemExit) as stopped:
            smartfarm_cli.main(argv)
        assert stopped.value.code == 0
        assert f"smartfarm {VERSION}" in capsys.readouterr().out
    # As a process (the console script runs smartfarm_cli:main).
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "smartfarm_cli", "--version"], cwd=root,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip().startswith(f"smartfarm {VERSION}")


def test_every_option_of_every_command_has_help() -> None:
    parsers = {
        "smartfarm edge": edge_cli._parser(),
        "smartfarm cloud": cloud_cli._parser(),
        "smartfarm sim": sim_farm._parser(),
        "smartfarm demo": demo_with_cloud._parser(),
        "smartfarm demo --edge-only": demo_edge_only._parser(),
    }
    missing = []
    seen = 0
    for prog, parser in parsers.items():
        for path, action in _walk(parser, prog):
            seen += 1
            name = "/".join(action.option_strings) or action.dest
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {name}")
    assert seen > 60  # the walk reached the subcommands
    assert missing == []


def test_top_level_help_lists_the_commands_and_the_version_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert smartfarm_cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("edge", "sim", "cloud", "demo", "--version", "--help"):
        assert word in out
    assert smartfarm_cli.main([]) == 2
    assert smartfarm_cli.main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("SMARTFARM_EDGE_"):
            monkeypatch.delenv(name)
    path, _ = init_site(tmp_path / "site", farm_id="farm-t")
    return path


def test_a_good_config_is_one_ok_line_and_print_dumps_it_masked(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert edge_cli.edge_main(["check-config", "--config", str(site)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith(f"OK: {site.resolve()} — farm farm-t, 2 rooms, 10 devices"
                          " (2 sensors, 8 actuators), broker 127.0.0.1:1884")
    assert "local page http://127.0.0.1:8088/" in out and out.rstrip().endswith("no cloud sync")

    (site.parent / "credentials" / "admin-password").unlink()
    assert edge_cli.edge_main(["check-config", "--config", str(site)]) == 0
    assert "no admin password" in capsys.readouterr().out

    monkeypatch.setenv("SMARTFARM_EDGE_API__ADMIN_PASSWORD", "letmein-secret")
    assert edge_cli.edge_main(["check-config", "--print", "--config", str(site)]) == 0
    out = capsys.readouterr().out
    dump = json.loads(out)
    assert "letmein-secret" not in out
    assert dump["api"]["admin_password"] == "********"
    assert dump["broker"]["port"] == 1884 and len(dump["devices"]) == 10
    assert dump["resolved"]["database"].endswith("edge.db")


def _break(site: Path) -> None:
    text = site.read_text()
    text = text.replace('species = "oyster"', 'species = "shitake"', 1)
    text = text.replace("[alerts]", "[alerts]\nsilnt_minutes = 3", 1)
    text += ('\n[[devices]]\nid = "fan-1"\nroom = "oyster-a"\nkind = "actuator"\n'
             'actuator = "exhaust_fan"\nsafety = { min_on_s = -5 }\n'
             '\n[[devices]]\nid = "probe-9"\nroom = "nowhere"\nkind = "sensor"\n')
    site.write_text(text)


def _line_of(site: Path, needle: str) -> int:
    return next(i for i, line in enumerate(site.read_text().splitlines(), 1) if needle in line)


def test_every_problem_at_once_named_by_id_with_value_and_source(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _break(site)
    monkeypatch.setenv("SMARTFARM_EDGE_BROKER__PORT", "abc")
    assert edge_cli.edge_main(["check-config", "--config", str(site)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0] == f"error: {site}: 5 problems"
    problems = [line.removeprefix("  - ") for line in lines[1:]]
    assert problems == [
        "broker.port 'abc' is not a whole number (from SMARTFARM_EDGE_BROKER__PORT=abc)",
        "`alerts.silnt_minutes` is not a setting (did you mean `silent_minutes`?)"
        f" (line {_line_of(site, 'silnt_minutes')})",
        "room `oyster-a`: species 'shitake' is not one of oyster, shiitake, lions_mane"
        f" (line {_line_of(site, 'shitake')})",
        "device `fan-1` (room `oyster-a`): safety.min_on_s -5 must be ≥ 0"
        f" (line {_line_of(site, 'min_on_s = -5')})",
        "device `probe-9`: room 'nowhere' is not a room of this config"
        f" (rooms: oyster-a, lions-mane-b) (line {_line_of(site, 'probe-9')})",
    ]
    # The same report when the edge is started, with the same exit status and no traceback.
    assert edge_cli.edge_main(["run", "--config", str(site)]) == 2
    assert capsys.readouterr().err == err
    with pytest.raises(ConfigError) as raised:
        load_config(site)
    assert len(raised.value.problems) == 5


def test_problems_in_environment_json_and_rules_are_named_by_id(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rooms = [{"id": "room-a", "species": "oyster", "stage": "fruting"},
             {"id": "room-a", "species": "oyster", "stage": "pinning",
              "rules": [{"id": "rh-1", "room_id": "room-a", "actuator": "x", "type": "threshold",
                         "metric": "humidity_pct", "for_s": -1},
                        {"id": "rh-2", "room_id": "room-a", "actuator": "x", "type": "treshold"}]}]
    monkeypatch.setenv("SMARTFARM_EDGE_ROOMS", json.dumps(rooms))
    monkeypatch.setenv("SMARTFARM_EDGE_DEVICES", "[]")
    monkeypatch.setenv("SMARTFARM_EDGE_API__ADMIN_PASSWORD", "x" * 3)
    monkeypatch.setenv("SMARTFARM_EDGE_AUTOMATION__TICK_S", "0")
    assert edge_cli.edge_main(["check-config", "--config", str(site)]) == 2
    err = capsys.readouterr().err
    assert "room `room-a`: stage 'fruting' is not one of spawn_run, pinning, fruiting" \
           " (from SMARTFARM_EDGE_ROOMS=" in err
    assert "room `room-a`, rule `rh-1`: for_s -1 must be ≥ 0" in err
    assert "room `room-a`, rule `rh-2`: type 'treshold' is not one of threshold, schedule, pid" \
           in err
    assert "automation.tick_s 0 must be > 0 (from SMARTFARM_EDGE_AUTOMATION__TICK_S=0)" in err
    assert "room `room-a`: 2 rooms have this id" in err
    assert "xxx" not in err


def test_checks_done_before_start_up(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMARTFARM_EDGE_AUTOMATION__TIMEZONE", "Mars/Olympus")
    site.write_text(site.read_text().replace('mode = "embedded"', 'mode = "external"'))
    assert edge_cli.edge_main(["run", "--config", str(site)]) == 2
    err = capsys.readouterr().err
    assert "automation.timezone 'Mars/Olympus' is not a time zone" in err
    assert "(from SMARTFARM_EDGE_AUTOMATION__TIMEZONE=Mars/Olympus)" in err
    assert re.search(r'broker\.url is not set: broker\.mode = "external" needs url = '
                     r'"mqtt://host:port" \(line \d+\)', err), err


def test_a_port_in_use_names_the_setting_not_a_traceback(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMARTFARM_EDGE_BROKER__PORT", str(free_port()))
    monkeypatch.setenv("SMARTFARM_EDGE_DATA_DIR", str(site.parent / "data-run"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("SMARTFARM_EDGE_API__PORT", str(port))
        handlers = logging.root.handlers[:]
        try:
            assert edge_cli.edge_main(["run", "--config", str(site)]) == 2
        finally:
            logging.root.handlers[:] = handlers
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: the edge could not start: api.port {port} is already in use" in err
    assert f"(api.port in {site.resolve()} or SMARTFARM_EDGE_API__PORT)" in err


def test_bad_toml_and_missing_file_are_one_line(
    site: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    site.write_text(site.read_text().replace("commit_max_items = 2000", "commit_max_items = = 2"))
    assert edge_cli.edge_main(["check-config", "--config", str(site)]) == 2
    err = capsys.readouterr().err
    line = _line_of(site, "commit_max_items")
    assert f"invalid TOML: Invalid value (at line {line}" in err and len(err.splitlines()) == 1
    assert edge_cli.edge_main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "smartfarm edge init" in capsys.readouterr().err


def test_cloud_check_config_lists_every_problem_with_its_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text('host = "0.0.0.0"\nlog_format = "xml"\n\n[auth]\naccess_ttl_s = 5\n')
    monkeypatch.setenv("SMARTFARM_CLOUD_PORT", "eighty")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db/x")
    assert cloud_cli.cloud_main(["--config", str(config), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"config error: {config}: 3 problems",
        "  - port 'eighty' is not a whole number (from SMARTFARM_CLOUD_PORT=eighty)",
        "  - log_format 'xml' is not one of text, json (line 2)",
        "  - auth.access_ttl_s 5 must be ≥ 30 (line 5)",
    ]
    config.write_text('host = "0.0.0.0"\n')
    monkeypatch.delenv("SMARTFARM_CLOUD_PORT")
    assert cloud_cli.cloud_main(["--config", str(config), "check-config"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "hunter2" not in out
    assert out.startswith(f"OK: {config.resolve()} — listens on http://0.0.0.0:8000/,"
                          " database postgresql://u:**********@db/x")


@pytest.mark.postgres
def test_cloud_serve_on_a_port_in_use_is_one_line(tmp_path: Path, databases: Any) -> None:
    env = {**os.environ, "DATABASE_URL": databases.dsn(databases.create()),
           "SMARTFARM_CLOUD_DATA_DIR": str(tmp_path / "cloud"),
           "SMARTFARM_CLOUD_JOBS__IN_PROCESS_WORKER": "false"}
    root = Path(__file__).resolve().parents[2]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "smartfarm_cli", "cloud", "serve", "--port", str(port)],
            cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "--port or SMARTFARM_CLOUD_PORT" in done.stderr
