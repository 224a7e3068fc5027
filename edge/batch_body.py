"""The body of an upload: outbox records (a batch, or a part of one) as the cloud's ``Batch``
JSON (shared/sync.py), gzip-compressed. The one encoder of both uploaders, HTTPS (edge/uplink.py)
and AWS IoT (edge/iot_uplink.py)."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

import msgspec

from shared.sync import PROTOCOL_VERSION, BatchOut

# gzip level 5: JSON readings shrink ~8x; higher levels cost a Pi far more CPU for a few % less.
GZIP_LEVEL: Final = 5

_encode: Final = msgspec.json.Encoder().encode


class BatchEncoder:
    """Encodes records already encoded one by one (``Prepared.records``) into a batch body; the
    header's ``sent_at`` is the edge clock at each call (each attempt)."""

    def __init__(self, edge_id: str, farm_id: str, clock: Callable[[], datetime]) -> None:
        self._edge_id = edge_id
        self._farm_id = farm_id
        self._clock = clock

    def json(self, first_seq: int, records: Sequence[bytes]) -> bytes:
        """The Batch JSON of ``records``, whose seqs run from ``first_seq``."""
        return _encode(BatchOut(
            protocol=PROTOCOL_VERSION,
            edge_id=self._edge_id,
            farm_id=self._farm_id,
            first_seq=first_seq,
            last_seq=first_seq + len(records) - 1,
            sent_at=self._clock(),
            records=[msgspec.Raw(r) for r in records],
        ))

    def body(self, first_seq: int, records: Sequence[bytes], *, compress: bool = True) -> bytes:
        """``json`` gzip-compressed (unless ``compress`` is off), as an upload carries it."""
        raw = self.json(first_seq, records)
        return gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0) if compress else raw
