"""edge.firmware: the image folder (add, find, remove, refuse what is not an image), the version
a status message names, and where an offer stands."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path

import msgspec
import pytest

from edge.firmware import (
    MAX_IMAGE_BYTES,
    FirmwareError,
    FirmwareStore,
    Offer,
    cancel_offer,
    mark_downloaded,
    mark_installed,
    new_token,
    offer_for_token,
    offer_state,
    offers,
    running_version,
    save_offer,
)
from edge.store.devices import upsert_status
from edge.store.migrations import load_migrations, migrate
from shared.models import Status
from shared.sync import KIND_CODES, StatusData


def _image(path: Path, size: int = 4096) -> Path:
    path.write_bytes(b"\xe9" + os.urandom(size - 1))
    return path


def test_an_image_is_stored_with_its_digests_and_found_for_its_devices(tmp_path: Path) -> None:
    store = FirmwareStore(tmp_path / "fw")
    src = _image(tmp_path / "a.bin")
    pinned = store.add(src, version="1.2.0", devices=("heater-1",))
    data = src.read_bytes()
    assert pinned.sha256 == hashlib.sha256(data).hexdigest()
    assert pinned.md5 == hashlib.md5(data).hexdigest()
    assert pinned.size == 4096 and pinned.devices == ("heater-1",)
    assert store.path(pinned).read_bytes() == data
    assert (store.path(pinned).stat().st_mode & 0o777) == 0o600
    generic = store.add(_image(tmp_path / "b.bin"), version="1.2.0-any")
    assert store.for_device("heater-1", "1.2.0") == pinned
    assert store.for_device("fan-1", "1.2.0-any") == generic
    with pytest.raises(FirmwareError, match=r"no firmware '1.2.0' for fan-1 \(it can take:"
                                            r" 1.2.0-any\)") as err:
        store.for_device("fan-1", "1.2.0")
    assert err.value.field == "version"
    # A second store on the same folder (the CLI beside the running edge) sees the same.
    assert [i.version for i in FirmwareStore(tmp_path / "fw").images()] == ["1.2.0-any", "1.2.0"]
    index = json.loads((tmp_path / "fw" / "index.json").read_text())
    assert {i["version"] for i in index["images"]} == {"1.2.0", "1.2.0-any"}


def test_a_device_image_is_preferred_to_a_generic_one_of_the_same_version(
    tmp_path: Path,
) -> None:
    store = FirmwareStore(tmp_path)
    generic = store.add(_image(tmp_path / "g.bin"), version="2.0", devices=())
    with pytest.raises(FirmwareError, match="already stored for any device"):
        store.add(_image(tmp_path / "p.bin"), version="2.0", devices=("n1",))
    store.remove(generic.sha256[:10])
    pinned = store.add(_image(tmp_path / "p.bin"), version="2.0", devices=("n1",))
    other = store.add(_image(tmp_path / "q.bin"), version="2.0", devices=("n2",))
    assert store.for_device("n1", "2.0") == pinned and store.for_device("n2", "2.0") == other


@pytest.mark.parametrize(("content", "reason"), [
    (b"\xe9" * 10, "too small"),
    (b"esphome:\n" * 100, "first byte is not 0xE9"),
    (b"PK\x03\x04" + b"\0" * 1000, "first byte is not 0xE9"),
])
def test_what_is_not_an_esp_image_is_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    src = tmp_path / "x.bin"
    src.write_bytes(content)
    with pytest.raises(FirmwareError, match=reason) as err:
        FirmwareStore(tmp_path / "fw").add(src, version="1.0")
    assert err.value.field == "file"
    assert FirmwareStore(tmp_path / "fw").images() == []


def test_too_big_a_missing_file_and_bad_versions_are_refused(tmp_path: Path) -> None:
    store = FirmwareStore(tmp_path / "fw")
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:
        out.write(b"\xe9")
        out.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(FirmwareError, match="at most"):
        store.add(big, version="1.0")
    with pytest.raises(FirmwareError, match="cannot read"):
        store.add(tmp_path / "nope.bin", version="1.0")
    for version in ("", "../1", "1 2", "-1", "x" * 41, "1/2"):
        with pytest.raises(FirmwareError, match="invalid firmware version"):
            store.add(_image(tmp_path / "ok.bin"), version=version)
    with pytest.raises(Exception, match="device id"):
        store.add(_image(tmp_path / "ok.bin"), version="1.0", devices=("a/b",))
    with pytest.raises(FirmwareError, match="no stored image"):
        store.remove("1.0")
    assert list((tmp_path / "fw").glob("*.bin")) == []  # nothing half-added


def test_concurrent_adds_keep_every_image(tmp_path: Path) -> None:
    store = FirmwareStore(tmp_path / "fw")
    files = [_image(tmp_path / f"{i}.bin") for i in range(8)]
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            FirmwareStore(tmp_path / "fw").add(files[i], version=f"1.{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(i.version for i in store.images()) == [f"1.{i}" for i in range(8)]


@pytest.mark.parametrize(("firmware", "version"), [
    ("1.3.0", "1.3.0"), ("smartfarm-esphome/1.3.0", "1.3.0"), ("smartfarm 1.3.0", "1.3.0"),
    ("smartfarm-sim/0.1", "0.1"), (None, None), ("", None),
])
def test_the_running_version_is_read_from_the_status_firmware(
    firmware: str | None, version: str | None,
) -> None:
    assert running_version(firmware) == version


def _db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    migrate(conn, load_migrations())
    return conn


def _offer(device: str = "n1", version: str = "2.0", at: float = 1000.0) -> Offer:
    return Offer(device_id=device, version=version, sha256="a" * 64, command_id="c1",
                 offered_at=at, offered_by="admin", expires_at=at + 3600,
                 from_firmware="smartfarm/1.0", downloaded_at=None, installed_at=None)


def test_an_offer_lives_until_installed_replaced_cancelled_or_expired() -> None:
    conn = _db()
    token, digest = new_token()
    save_offer(conn, _offer(), digest)
    assert offer_for_token(conn, token, 1500.0) is not None
    assert offer_for_token(conn, token, 5000.0) is None  # expired
    assert offer_for_token(conn, new_token()[0], 1500.0) is None  # someone else's guess
    mark_downloaded(conn, "n1", 1600.0)
    assert offers(conn)["n1"].downloaded_at == 1600.0
    assert not mark_installed(conn, "n1", "smartfarm/1.0", 1700.0)  # still the old one
    assert mark_installed(conn, "n1", "smartfarm/2.0", 1700.0)
    assert offer_for_token(conn, token, 1800.0) is None  # used up
    # A new offer replaces the old one (and its token).
    token2, digest2 = new_token()
    save_offer(conn, _offer(version="2.1", at=2000.0), digest2)
    assert offer_for_token(conn, token2, 2100.0) is not None
    assert offers(conn)["n1"].version == "2.1" and offers(conn)["n1"].installed_at is None
    assert cancel_offer(conn, "n1") and not cancel_offer(conn, "n1")
    assert offer_for_token(conn, token2, 2100.0) is None


def test_the_state_of_an_offer() -> None:
    offer = _offer()
    assert offer_state(offer, "pending", None, "smartfarm/1.0", 1100.0) == ("offered", None)
    assert offer_state(offer, "acked", None, "smartfarm/1.0", 1100.0) == ("offered", None)
    downloading = dataclasses.replace(offer, downloaded_at=1200.0)
    assert offer_state(downloading, "acked", None, None, 1300.0) == ("downloading", None)
    assert offer_state(offer, "acked", None, "x/2.0", 1300.0) == ("installed", None)
    assert offer_state(offer, "timed_out", None, None, 1300.0) == (
        "failed", "timed out")
    assert offer_state(offer, "failed", "an update is already running", None, 1300.0) == (
        "failed", "an update is already running")
    assert offer_state(offer, "superseded", None, None, 1300.0)[0] == "failed"
    assert offer_state(offer, "acked", None, None, 9000.0)[0] == "expired"


def test_status_records_carry_the_firmware_to_the_cloud() -> None:
    conn = _db()
    upsert_status(conn, Status(device_id="n1", firmware="smartfarm/2.0"), "r1", 10.0)
    upsert_status(conn, Status(device_id="n1", online=False), "r1", 20.0)  # a last will
    upsert_status(conn, Status(device_id="n1", firmware="smartfarm/2.1"), "r1", 30.0)
    rows = conn.execute("SELECT data FROM outbox WHERE kind = ? ORDER BY id",
                        (KIND_CODES["status"],)).fetchall()
    records = [msgspec.json.decode(r["data"], type=StatusData) for r in rows]
    assert [(r.online, r.firmware) for r in records] == [
        (True, "smartfarm/2.0"), (False, "smartfarm/2.0"), (True, "smartfarm/2.1")]


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1:8088", True), ("localhost:8088", True), ("localhost", True), ("[::1]:8088", True),
    ("127.1.2.3", True), ("edge.localhost", True),
    ("192.168.1.10:8088", False), ("[fd00::1]:8088", False), ("farm-edge.local", False),
    ("farm-edge:8088", False),
])
def test_a_loopback_address_is_no_place_to_download_from(host: str, loopback: bool) -> None:
    from edge.api.firmware import is_loopback

    assert is_loopback(host) is loopback


def test_a_status_with_an_implausible_firmware_is_refused_naming_the_field() -> None:
    from shared.errors import PayloadError
    from shared.models import parse_status

    ok = parse_status(b'{"device_id": "n1", "firmware": "smartfarm-esphome/1.3.0"}')
    assert running_version(ok.firmware) == "1.3.0"
    with pytest.raises(PayloadError) as err:
        parse_status(('{"device_id": "n1", "firmware": "%s"}' % ("x" * 65)).encode())
    assert err.value.field == "firmware"
