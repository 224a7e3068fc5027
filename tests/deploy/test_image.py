"""The image is real: deploy/image/build-and-check.sh makes a Debian bookworm base with
debootstrap, builds deploy/docker/Dockerfile on it with podman, runs a cloud container on a
throwaway PostgreSQL database (its /health and the image's own HEALTHCHECK), registers an edge
over REST, and an edge container fed by a simulator container syncs readings into it.

That takes minutes and root (podman, debootstrap): it runs only with SMARTFARM_IMAGE_TEST=1
(`make image-check` runs the same script; CI's .ci/run has the opt-in block). The script's
shellcheck and the pip settings it hands the build are checked on every run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "image" / "build-and-check.sh"


def load(name: str) -> ModuleType:
    """A module of deploy/image (plain scripts for the host's python3, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / "image" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


def test_the_build_gets_this_machines_pip_indexes_and_ca(tmp_path: Path) -> None:
    pip_conf = load("pip_conf")
    site = tmp_path / "pip.conf"
    site.write_text("[global]\ncert = /etc/site-ca.pem\nfind-links = /opt/wheels\n"
                    "extra-index-url = file:///opt/pypi/simple https://mirror.test/simple\n"
                    "[install]\ntrusted-host = mirror.test\n")
    env = {"PIP_CONFIG_FILE": str(site), "PIP_DEFAULT_TIMEOUT": "180"}
    files = pip_conf.config_files(env, tmp_path)
    assert files[-3:] == [tmp_path / ".pip/pip.conf", tmp_path / ".config/pip/pip.conf", site]
    settings = pip_conf.Settings(env, [site])  # not this machine's own /etc/pip.conf
    conf = pip_conf.pip_conf(settings).splitlines()
    # file:// indexes and find-links are host paths: not passed; the CA is the mounted secret.
    assert conf == ["[global]", "extra-index-url = https://mirror.test/simple",
                    "trusted-host = mirror.test", "default-timeout = 180",
                    "cert = /run/secrets/pip-ca"]
    assert pip_conf.ca_bundle(settings, env) == Path("/etc/site-ca.pem")
    # The environment wins over the files, as it does for pip.
    env = {**env, "PIP_INDEX_URL": "https://proxy.test/pypi/simple", "PIP_CERT": "/ca.pem"}
    settings = pip_conf.Settings(env, [site])
    assert "index-url = https://proxy.test/pypi/simple" in pip_conf.pip_conf(settings)
    assert pip_conf.ca_bundle(settings, env) == Path("/ca.pem")
    # Nothing configured: pip's defaults and the system bundle.
    settings = pip_conf.Settings({}, [])
    assert pip_conf.pip_conf(settings) == "[global]\ncert = /run/secrets/pip-ca\n"
    assert pip_conf.ca_bundle(settings, {}) == Path("/etc/ssl/certs/ca-certificates.crt")


def test_pip_conf_refuses_a_missing_ca_bundle(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "image" / "pip_conf.py"), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PIP_CERT": str(tmp_path / "missing.pem")},
    )
    assert result.returncode == 1 and "no CA bundle" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(3600)
def test_the_image_builds_runs_and_an_edge_container_syncs_to_the_cloud() -> None:
    if os.environ.get("SMARTFARM_IMAGE_TEST") != "1":
        pytest.skip("builds and runs the container image (minutes, root, podman, debootstrap): "
                    "set SMARTFARM_IMAGE_TEST=1, or run `make image-check`")
    result = subprocess.run([str(SCRIPT), "all"], capture_output=True, text=True, timeout=3500,
                            cwd=REPO)
    tail = result.stderr[-6000:]
    assert result.returncode == 0, tail
    assert "image-check: the image's HEALTHCHECK passes in the cloud container" in result.stderr
    synced = re.search(r"edge high_water (\d+), online True", result.stderr)
    assert synced and int(synced.group(1)) > 0, tail
    rows = re.search(r"sensor_data holds (\d+) rows", result.stderr)
    assert rows and int(rows.group(1)) > 0, tail
    assert "image-check: OK" in result.stderr
    phases = dict(re.findall(r"^phase (\w+) ([\d.]+)$", result.stdout, re.MULTILINE))
    assert set(phases) == {"base", "build", "check"}, result.stdout
    print("image phases (s):", phases)
