"""A private CA plus a server certificate for the broker's TLS listener (`smartfarm edge init
--tls`, `smartfarm edge tls-cert`): ECDSA P-256, which ESP32 mbedTLS speaks.

A farm has no public hostname, so a public CA cannot sign for the Pi; devices are flashed with
this CA's certificate instead and verify the broker against it.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.credentials import write_atomic
from edge.tls import TlsError, TlsFiles

CA_DAYS = 20 * 365
SERVER_DAYS = 10 * 365  # devices in a grow room are rarely re-flashed
_BACKDATE = dt.timedelta(days=1)  # devices whose clock lags a little still accept it


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smartfarm"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _subject_alt_names(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    if not (files.ca_cert.is_file() and files.ca_key.is_file()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except ValueError as exc:
        raise TlsError(f"{files.ca_cert} / {files.ca_key}: not a usable CA: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{files.ca_key}: expected an EC key")
    return cert, key


def _new_ca(farm_id: str, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"smartfarm {farm_id} device CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _current_names(path: Path, ca: x509.Certificate) -> tuple[list[str], bool]:
    """The names in the existing server certificate if this CA issued it, and whether it is
    still good for more than 30 days."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return [], False
    if cert.issuer != ca.subject:
        return [], False
    names = [str(v) for v in sans.get_values_for_type(x509.DNSName)]
    names += [str(v) for v in sans.get_values_for_type(x509.IPAddress)]
    fresh = cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    return names, fresh


def ensure_certificates(files: TlsFiles, names: list[str], *, farm_id: str) -> bool:
    """Make the CA (kept if present: devices already trust it) and a server certificate for
    ``names`` (host names and IP addresses devices connect to) plus those the current one
    already has. Returns True if anything was written; a second call with the same names
    changes nothing. Keys are mode 0600."""
    if not names:
        raise TlsError("the server certificate needs at least one host name or address")
    now = dt.datetime.now(dt.UTC)
    loaded = _load_ca(files)
    wrote = False
    if loaded is None:
        ca_cert, ca_key = _new_ca(farm_id, now)
        write_atomic(files.ca_key, _pem_key(ca_key))
        write_atomic(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        wrote = True
    else:
        ca_cert, ca_key = loaded
    current, fresh = ([], False) if wrote else _current_names(files.cert, ca_cert)
    if fresh and files.key.is_file() and set(_subject_alt_names(names)) <= set(
            _subject_alt_names(current)):
        return False
    names = [*names, *current]  # a device still using an old name keeps working
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(_subject_alt_names(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_atomic(files.key, _pem_key(key))
    write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return True
