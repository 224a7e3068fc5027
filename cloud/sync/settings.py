"""Settings of the edge sync (the ``[sync]`` section of the cloud config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SyncConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A cloud command not delivered within this long is marked expired instead of sent: an
    # actuator switched hours after the user asked is worse than not at all.
    command_ttl_s: float = Field(default=600, gt=0, le=7 * 86_400)
    # Decompressed size limit of one batch (5,000 records of a few hundred bytes fit easily);
    # checked while inflating, so a gzip bomb costs at most this much memory.
    max_batch_bytes: int = Field(default=32 * 2**20, ge=1024)
    # |cloud − edge clock| above this is a gross edge clock error: edge-clock timestamps are
    # shifted by the measured offset (see cloud.sync.clock). Below it, timestamps are kept.
    clock_correction_s: float = Field(default=300, ge=1)
    # WebSocket ping interval; last_seen is refreshed at this pace while a stream is open.
    heartbeat_s: float = Field(default=20, gt=0, le=600)
    # An edge counts as online when it was seen (stream, poll or batch) within this long.
    online_window_s: float = Field(default=120, gt=0)
    hello_timeout_s: float = Field(default=10, gt=0, le=120)
    # How often each instance marks stale pending commands expired (idempotent across instances).
    expiry_sweep_s: float = Field(default=30, gt=0)
    # AWS IoT Core: the account's IoT Data endpoint (``aws iot describe-endpoint --endpoint-type
    # iot:Data-ATS``, as https://…-ats.iot.REGION.amazonaws.com). When set, a batch that came
    # through the topic rule (header X-Smartfarm-Reply-Topic) gets its answer published on the
    # edge's acks topic. Credentials: boto3's usual chain.
    iot_data_endpoint: str | None = Field(default=None, pattern=r"^https://\S+$")
    iot_region: str | None = Field(default=None, max_length=64)
    # With iot_data_endpoint set, commands and config are also published on the commands topic
    # of each edge on AWS IoT; one still pending (or a config not applied) this long after it was
    # published is published again by the expiry sweep: AWS IoT drops a QoS 1 message for an
    # edge that is offline, and an edge without a WebSocket hears nothing else.
    iot_republish_s: float = Field(default=60, gt=0, le=86_400)
    # Pacing (cloud.sync.pace): when this instance's p90 time to store a batch (event-loop lag
    # included) passes pace_high_ms, its answers ask the edges to send their readings less often
    # (header X-Smartfarm-Batch-Interval), up to every pace_max_s; under pace_low_ms they go
    # back to their own batch_max_age_s. Urgent records and full batches are never held.
    # pace_max_s = 0 turns pacing off.
    pace_max_s: float = Field(default=30, ge=0, le=300)
    pace_high_ms: float = Field(default=60, gt=0, le=60_000)
    pace_low_ms: float = Field(default=20, gt=0, le=60_000)

    @model_validator(mode="after")
    def _pace_band(self) -> SyncConfig:
        if self.pace_low_ms >= self.pace_high_ms:
            raise ValueError("sync.pace_low_ms must be below sync.pace_high_ms")
        return self
