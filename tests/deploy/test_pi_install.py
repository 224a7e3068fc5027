"""deploy/pi/install.sh against a temporary root, systemd and user calls dry-run: the layout,
secret file modes, idempotence (a second run changes nothing), --uninstall keeping config and
data, and `systemd-analyze verify` on the installed unit.

The venv is real: the project is built into a wheel once and pip-installed into it without
dependencies (no network); the installer's `smartfarm edge init` finds those on PYTHONPATH,
pointing at this checkout's venv."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "pi" / "install.sh"
UNIT = REPO / "deploy" / "pi" / "smartfarm-edge.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as a wheel, built from a copy (no build/ or egg-info in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "smartfarm_cli.py"):
        shutil.copy2(REPO / name, src / name)
    for package in ("edge", "cloud", "shared", "firmware_sim", "demo"):
        shutil.copytree(REPO / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=240)
    return next(out.glob("smartfarm-*.whl"))


def run(root: Path, *args: str, wheel: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PIP_NO_DEPS": "1",
        "PIP_NO_INDEX": "1",
        "PYTHONPATH": sysconfig.get_paths()["purelib"],  # dependencies from this venv
    }
    env.pop("SYSTEMCTL", None)
    argv = ["bash", str(SCRIPT), "--root", str(root), "--dry-run-systemd",
            "--python", sys._base_executable, "--farm-id", "pi-farm",
            "--tls-name", "farm-pi.local", *args]
    if wheel is not None:
        argv.append(str(wheel))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)


def snapshot(root: Path) -> dict[str, tuple[int, str, int]]:
    """mode, content hash and mtime of every file outside the venv."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "venv" in rel.parts or rel.parts[:2] == ("usr", "lib") or path.is_dir():
            continue
        st = path.lstat()
        files[str(rel)] = (
            stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest(),
            st.st_mtime_ns)
    return files


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Path, subprocess.CompletedProcess[str]]]:
    root = tmp_path_factory.mktemp("root")
    first = run(root, wheel=wheel)
    assert first.returncode == 0, first.stderr + first.stdout
    yield root, first


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_and_secret_modes(installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, first = installed
    etc, data = root / "etc/smartfarm", root / "var/lib/smartfarm"
    assert os.access(root / "opt/smartfarm/venv/bin/smartfarm", os.X_OK)
    assert (root / "etc/systemd/system/smartfarm-edge.service").read_text() == UNIT.read_text()
    assert mode(root / "usr/local/bin/smartfarm") == 0o755
    config = tomllib.loads((etc / "edge.toml").read_text())
    # The config names the paths the running system sees, not the trial root.
    assert config["data_dir"] == "/var/lib/smartfarm"
    assert config["broker"]["password_file"] == "/var/lib/smartfarm/broker/passwd"
    assert config["broker"]["tls"]["enabled"] is True
    assert config["broker"]["tls"]["host"] == "0.0.0.0"
    assert config["farm_id"] == "pi-farm"
    assert (mode(etc), mode(data), mode(etc / "credentials")) == (0o750, 0o750, 0o700)
    secrets = ["credentials/device-secrets.toml", "credentials/admin-password",
               "credentials/tls/ca.key", "credentials/tls/server.key"]
    for name in secrets:
        assert mode(etc / name) == 0o600, name
    assert mode(data / "broker/passwd") == 0o600
    assert mode(etc / "credentials/tls/ca.crt") == 0o644
    cert = x509.load_pem_x509_certificate((etc / "credentials/tls/server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "farm-pi.local" in sans.get_values_for_type(x509.DNSName)
    out = first.stdout
    assert "+ useradd --system" in out and "smartfarm" in out
    assert "+ chown -R smartfarm:smartfarm" in out
    assert "+ systemctl daemon-reload" in out
    assert "+ systemctl enable smartfarm-edge.service" in out
    assert "+ systemctl restart smartfarm-edge.service" in out


def test_unit_passes_systemd_analyze_verify(
    installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path,
) -> None:
    if not Path(SYSTEMD_ANALYZE).exists():
        reason = "systemd-analyze is not installed (apt-get install systemd)"
        if os.environ.get("SMARTFARM_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    root, _ = installed
    # verify --root resolves ExecStart= inside the root (the venv's real entry point) and needs
    # the stock units the service depends on (multi-user.target, network-online.target…).
    units = root / "usr/lib/systemd/system"
    if not units.exists():
        shutil.copytree(SYSTEM_UNITS, units, symlinks=True)
    unit = "/etc/systemd/system/smartfarm-edge.service"
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", f"--root={root}", unit],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # …and it does catch mistakes: a unit whose binary is missing fails.
    broken = root / "etc/systemd/system/smartfarm-broken.service"
    broken.write_text(UNIT.read_text().replace("/opt/smartfarm/venv/bin/smartfarm",
                                               "/opt/smartfarm/venv/bin/missing"))
    try:
        result = subprocess.run([SYSTEMD_ANALYZE, "verify", f"--root={root}",
                                 "/etc/systemd/system/smartfarm-broken.service"],
                                capture_output=True, text=True, timeout=60)
    finally:
        broken.unlink()
    assert result.returncode != 0 and "not executable" in result.stderr


def test_unit_is_hardened() -> None:
    text = UNIT.read_text()
    service = dict(line.split("=", 1) for line in text.splitlines()
                   if "=" in line and not line.startswith("#"))
    expected = {
        "Type": "notify", "Restart": "always", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/smartfarm", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "", "User": "smartfarm",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert int(service["WatchdogSec"]) > 0
    assert text.count("ReadWritePaths=") == 1


def test_second_run_changes_nothing_then_uninstall_keeps_config(
    installed: tuple[Path, subprocess.CompletedProcess[str]], wheel: Path,
) -> None:
    root, _ = installed
    before = snapshot(root)
    venv_python = (root / "opt/smartfarm/venv/bin/python").lstat().st_mtime_ns
    second = run(root, wheel=wheel)
    assert second.returncode == 0, second.stderr + second.stdout
    assert snapshot(root) == before
    assert (root / "opt/smartfarm/venv/bin/python").lstat().st_mtime_ns == venv_python
    assert "keeping" in second.stdout and "installing smartfarm" not in second.stdout
    assert "daemon-reload" not in second.stdout and "restart" not in second.stdout

    # A secret someone loosened is tightened again, and nothing else changes.
    secret = root / "etc/smartfarm/credentials/device-secrets.toml"
    secret.chmod(0o644)
    assert run(root, wheel=wheel).returncode == 0
    assert mode(secret) == 0o600

    removed = run(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert "+ systemctl disable --now smartfarm-edge.service" in removed.stdout
    assert not (root / "opt/smartfarm").exists()
    assert not (root / "etc/systemd/system/smartfarm-edge.service").exists()
    assert not (root / "usr/local/bin/smartfarm").exists()
    kept = {k: v for k, v in before.items() if k.startswith(("etc/smartfarm", "var/lib"))}
    assert kept and {k: v for k, v in snapshot(root).items() if k in kept} == kept

    purged = run(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/smartfarm").exists() and not (root / "var/lib/smartfarm").exists()


def test_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        reason = "shellcheck is not installed (apt-get install shellcheck)"
        if os.environ.get("SMARTFARM_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    result = run(tmp_path, "--purge")
    assert result.returncode == 2 and "--purge only goes with --uninstall" in result.stderr
    result = run(tmp_path, str(tmp_path / "nope.whl"))
    assert result.returncode == 2 and "not found" in result.stderr
    result = subprocess.run(["bash", str(SCRIPT), "--root", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--dry-run-systemd" in result.stderr


def test_empty_install_has_no_example_rooms(wheel: Path, tmp_path: Path) -> None:
    """--empty: an edge the cloud will manage starts with no rooms or devices (the example ones
    would raise alerts for rooms the farm does not have)."""
    done = run(tmp_path, "--empty", wheel=wheel)
    assert done.returncode == 0, done.stderr + done.stdout
    config = tomllib.loads((tmp_path / "etc/smartfarm/edge.toml").read_text())
    assert config.get("rooms", []) == [] and config.get("devices", []) == []
