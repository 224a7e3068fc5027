"""The outbox in SQLite: records waiting for the cloud, the segments giving them seqs, the cursor.

Readings are read straight from ``readings`` (no outbox row: see schema.sql, migration 2); every
other kind is an ``outbox`` row, most appended by triggers (their kind codes are
``shared.sync.KIND_CODES``). Seqs are given out per batch (``assign``) and the batch is kept as a
segment, so a resend carries the same records under the same seqs. ``cursor`` keeps the marks and
segments, ``records`` reads and encodes a batch's records, ``retention`` keeps the disk bounded.
"""

from __future__ import annotations

from edge.store.outbox.cursor import (
    QUARANTINE,
    Marks,
    OutboxError,
    Probe,
    Segment,
    append,
    assign,
    cloud_command,
    delete_state,
    get_state,
    link_cloud_command,
    locate,
    marks,
    oldest_segment,
    oldest_unsynced_at,
    probe,
    rebase,
    save_acked,
    segment_containing,
    set_acked,
    set_state,
    unsynced,
)
from edge.store.outbox.records import Prepared, SeriesCache, prepare_new, prepare_segment
from edge.store.outbox.retention import Merged, Pruned, downsample, prune

__all__ = [
    "QUARANTINE",
    "Marks",
    "Merged",
    "OutboxError",
    "Prepared",
    "Probe",
    "Pruned",
    "Segment",
    "SeriesCache",
    "append",
    "assign",
    "cloud_command",
    "delete_state",
    "downsample",
    "get_state",
    "link_cloud_command",
    "locate",
    "marks",
    "oldest_segment",
    "oldest_unsynced_at",
    "prepare_new",
    "prepare_segment",
    "probe",
    "prune",
    "rebase",
    "save_acked",
    "segment_containing",
    "set_acked",
    "set_state",
    "unsynced",
]
