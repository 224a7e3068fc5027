"""The repo's nginx config (deploy/nginx/smartfarm.conf) on loopback, for benchmarks: the same
file with only its addresses changed (upstreams on the cloud instances' ports, listeners on free
loopback ports, a self-signed certificate in a temp dir), run by Debian's nginx in the foreground.

The wrapping ``nginx.conf`` is the benchmark's own (the repo ships an ``http {}``-level file):
one process, no access log, and room for a fleet's connections (nginx's default is 512).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.site import die_with_parent, free_port

NGINX_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "smartfarm.conf"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    return found or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


@dataclass(frozen=True)
class NginxSite:
    folder: Path
    main_conf: Path
    http_port: int
    https_port: int

    @property
    def cafile(self) -> Path:
        return self.folder / "fullchain.pem"

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def nginx_args(self) -> list[str]:
        """nginx's prefix, error log and main config for this site (``nginx -t`` takes them)."""
        return ["-p", str(self.folder), "-e", str(self.folder / "error.log"),
                "-c", str(self.main_conf)]


def write_certificate(folder: Path) -> None:
    """A self-signed certificate for 127.0.0.1 and localhost, where the conf expects one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))


def make_site(folder: Path, upstream_ports: list[int], *, connections: int = 8192) -> NginxSite:
    """Write the loopback copy of the repo's config and a main config including it."""
    conf = NGINX_CONF.read_text()
    http_port, https_port = free_port(), free_port()
    replacements = [
        ("listen 80 default_server", f"listen 127.0.0.1:{http_port} default_server"),
        ("listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl"),
        ("/etc/nginx/certs", str(folder)),
        ("/var/www/acme", str(folder / "acme")),
    ]
    names = re.findall(r"server (cloud-\d+):8000", conf)
    if len(names) != len(upstream_ports):
        raise ValueError(f"{NGINX_CONF} has {len(names)} upstreams, not {len(upstream_ports)}")
    replacements += [(f"server {n}:8000", f"server 127.0.0.1:{p}")
                     for n, p in zip(names, upstream_ports, strict=True)]
    for old, new in replacements:
        if old not in conf:
            raise ValueError(f"{old!r} not in {NGINX_CONF}")
        conf = conf.replace(old, new)
    write_certificate(folder)
    (folder / "site.conf").write_text(conf)
    temp = " ".join(f"{kind}_temp_path {folder / kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = folder / "nginx.conf"
    main.write_text(
        f"pid {folder / 'nginx.pid'};\nworker_rlimit_nofile {2 * connections};\n"
        f"events {{ worker_connections {connections}; }}\n"
        f"http {{\n  access_log off;\n  {temp}\n  include {folder / 'site.conf'};\n}}\n"
    )
    return NginxSite(folder, main, http_port, https_port)


@contextlib.contextmanager
def run_nginx(
    site: NginxSite, binary: str, timeout: float = 10.0
) -> Iterator[subprocess.Popen[bytes]]:
    """nginx serving ``site`` as one foreground process (no worker switching users) until exit."""
    log = (site.folder / "stderr.log").open("wb")
    proc = subprocess.Popen(
        [binary, *site.nginx_args(), "-g", "daemon off; master_process off;"],
        stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent,
    )
    log.close()
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(site.folder / 'stderr.log').read_text()}"
                                   f"{_tail(site.folder / 'error.log')}")
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", site.https_port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx not listening after {timeout:g} s")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 5) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
