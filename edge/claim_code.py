"""The farm's claim code (``credentials/claim-code``) and the claim passwords nodes log in with:
``<claim code>`` or ``<claim code>:<claim key>`` (docs/onboarding.md). No I/O but the code's file.
"""
from __future__ import annotations

import hashlib
import logging
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Final

from edge.credentials import write_atomic
from shared.topics import is_valid_id

if TYPE_CHECKING:
    from edge.config import EdgeSettings

log = logging.getLogger(__name__)

CLAIM_FILE_NAME: Final = "claim-code"
# Crockford's base32 (no I, L, O, U: nothing to misread on a label); 16 characters = 80 bits,
# shown and typed in groups of four: ``7K2M-QX9D-...``. Case, spaces and dashes do not matter.
_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CODE_CHARS: Final = 16
# A node that can take its credentials over MQTT logs in with ``<claim code>:<its claim key>``:
# 16-64 letters and digits it drew at random on its first boot and keeps in flash.
CLAIM_KEY_RE: Final = re.compile(r"^[A-Za-z0-9]{16,64}$")


def claim_code_path(settings: EdgeSettings) -> Path:
    """The claim code lives next to the broker's password file (``credentials/claim-code``)."""
    return settings.password_file_path.with_name(CLAIM_FILE_NAME)


def new_claim_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(_CODE_CHARS))
    return "-".join(raw[i:i + 4] for i in range(0, _CODE_CHARS, 4))


def normalise_code(text: str) -> str:
    """Upper case, without spaces and dashes; Crockford's look-alikes mapped (O→0, I/L→1)."""
    cleaned = "".join(text.split()).replace("-", "").upper()
    return cleaned.translate(str.maketrans("OIL", "011"))


def read_claim_code(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def ensure_claim_code(settings: EdgeSettings, *, rotate: bool = False) -> str:
    """The farm's claim code, created (mode 0600) when missing or when ``rotate``."""
    path = claim_code_path(settings)
    code = None if rotate else read_claim_code(path)
    if code is None:
        code = new_claim_code()
        write_atomic(path, code + "\n")
        log.info("farm claim code %s", "rotated" if rotate else "created")
    return code


def split_claim(password: str | None) -> tuple[str, str | None] | None:
    """(claim code part, claim key or None) of a claim password; None when it has a key part
    that is not a claim key."""
    text = (password or "")[:256]
    code, sep, key = text.partition(":")
    if not sep:
        return code, None
    return (code, key) if CLAIM_KEY_RE.fullmatch(key) else None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def room_hint(client_id: str) -> str | None:
    """The room a claim-mode node file was made for: its client id is ``<id>@<room>``."""
    _, sep, room = client_id.partition("@")
    return room if sep and is_valid_id(room) else None
