"""TLS for the embedded broker's device listener: the server context and where its files are.
Making the private CA and the server certificate (`smartfarm edge init --tls`) is edge/certs.py,
kept apart so the running edge never loads the cryptography package.
"""
from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import SmartfarmError

if TYPE_CHECKING:
    from edge.config import EdgeSettings


class TlsError(SmartfarmError):
    """A certificate or key cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def default_names() -> list[str]:
    """What devices on a LAN typically use for the Pi: its host name, its mDNS name, loopback."""
    host = socket.gethostname().split(".")[0]
    return [host, f"{host}.local", "localhost", "127.0.0.1"]


def server_context(cert_file: Path, key_file: Path,
                   min_version: str = "TLSv1.2") -> ssl.SSLContext:
    """A server-side context for the broker; TlsError naming the file if it cannot be loaded."""
    for what, path in (("cert_file", cert_file), ("key_file", key_file)):
        if not Path(path).is_file():
            raise TlsError(f"broker.tls.{what}: {path} not found "
                           "(create it with `smartfarm edge init --tls` or point it at yours)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion[min_version.replace("TLSv1.", "TLSv1_")]
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsError(f"broker.tls: cannot use {cert_file} with {key_file}: {exc}") from None
    return context


def tls_files(settings: EdgeSettings) -> TlsFiles:
    """The broker's TLS files from the config; the CA key sits next to the CA certificate."""
    tls = settings.broker.tls
    ca_cert = settings.resolve(tls.ca_file)
    return TlsFiles(ca_cert=ca_cert, ca_key=ca_cert.with_name("ca.key"),
                    cert=settings.resolve(tls.cert_file), key=settings.resolve(tls.key_file))
