"""The pip settings of this machine, for pip inside an image build: the same index URLs (from the
environment first, then pip's config files) and the same CA bundle (a TLS-inspecting proxy's CA
lives there). Both go in as build secrets; file:// indexes and find-links are host paths a build
cannot see, so they are left out.

    python3 deploy/image/pip_conf.py OUT   # writes OUT (a pip.conf), prints the CA bundle's path

Standard library only (runs on the host's python3). Tested in tests/deploy/test_image.py.
"""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# Where the Dockerfile mounts the CA bundle secret (`--mount=type=secret,id=pip-ca`).
CA_IN_BUILD = "/run/secrets/pip-ca"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def config_files(env: Mapping[str, str], home: Path) -> list[Path]:
    """pip's config files, lowest precedence first (site-wide, then the user's, then
    PIP_CONFIG_FILE)."""
    files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"), home / ".pip/pip.conf",
             home / ".config/pip/pip.conf"]
    if env.get("PIP_CONFIG_FILE"):
        files.append(Path(env["PIP_CONFIG_FILE"]))
    return files


class Settings:
    """pip's effective value of a key: the PIP_* environment variable, else [install], else
    [global] of the config files (later files win)."""

    def __init__(self, env: Mapping[str, str], files: Sequence[Path]) -> None:
        self.env = env
        self.conf = configparser.ConfigParser(interpolation=None)
        self.conf.read([f for f in files if f.is_file()])

    def get(self, key: str) -> str:
        env = self.env.get("PIP_" + key.upper().replace("-", "_"))
        if env is not None:
            return env
        for section in ("install", "global"):
            if self.conf.has_option(section, key):
                return self.conf.get(section, key)
        return ""


def pip_conf(settings: Settings) -> str:
    """A pip.conf for the build: reachable indexes and network options, the mounted CA."""
    lines = ["[global]"]
    for key in ("index-url", "extra-index-url"):
        urls = [u for u in settings.get(key).split() if u.startswith(("http://", "https://"))]
        if urls:
            lines.append(f"{key} = {' '.join(urls)}")
    for key in ("trusted-host", "proxy", "timeout", "default-timeout", "retries"):
        value = " ".join(settings.get(key).split())
        if value:
            lines.append(f"{key} = {value}")
    lines.append(f"cert = {CA_IN_BUILD}")
    return "\n".join(lines) + "\n"


def ca_bundle(settings: Settings, env: Mapping[str, str]) -> Path:
    """The CA bundle pip on this machine trusts."""
    for found in (settings.get("cert"), env.get("REQUESTS_CA_BUNDLE"), env.get("SSL_CERT_FILE")):
        if found:
            return Path(found)
    return Path(SYSTEM_CA)


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    if len(argv) != 1:
        print("usage: pip_conf.py OUT", file=sys.stderr)
        return 2
    settings = Settings(env, config_files(env, Path.home()))
    ca = ca_bundle(settings, env)
    if not ca.is_file():
        print(f"pip_conf: no CA bundle at {ca} (set PIP_CERT)", file=sys.stderr)
        return 1
    Path(argv[0]).write_text(pip_conf(settings))
    print(ca)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
