"""Settings of the background jobs (the ``[jobs]`` section of the cloud config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class JobsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # `serve` runs one worker in its own process, so the demo needs nothing more; production
    # turns it off and runs `smartfarm cloud worker` processes instead (any number, anywhere).
    in_process_worker: bool = True
    concurrency: int = Field(default=2, ge=1, le=64, description="jobs one worker runs at once")
    # Register the periodic schedule (every worker defers due periodic jobs; procrastinate makes
    # each tick one job whatever the number of workers). Off: on-demand jobs only.
    periodic: bool = True
    # A worker starting late defers a missed periodic tick only when it is at most this old.
    periodic_max_delay_s: float = Field(default=600, ge=0)
    # Transient failures (database away, a remote service throttling) retry with exponential
    # backoff: retry_base_s ** attempt seconds (2, 4, 8, 16 … by default).
    max_attempts: int = Field(default=6, ge=1, le=50)
    retry_base_s: int = Field(default=2, ge=0, le=60)
    shutdown_grace_s: float = Field(default=10, ge=0, le=600)
    # Finished jobs are deleted after this long (failed ones are kept twice as long).
    keep_finished_days: float = Field(default=7, gt=0)

    # process_sensor_data: hours re-examined each run (late uploads from an edge that was offline
    # are folded in when the hour's reading count changed).
    derived_lookback_hours: int = Field(default=48, ge=1, le=24 * 31)
    # cleanup_old_data: raw readings older than this are deleted (their hourly and daily
    # rollups stay); 0 keeps them forever.
    raw_retention_days: int = Field(default=90, ge=0)
    # Days folded from hourly into daily rollups on each run (late data within it is re-folded).
    rollup_lookback_days: int = Field(default=7, ge=1, le=366)
    # Hourly rollups older than this are deleted; 0 (default) keeps them.
    hourly_retention_days: int = Field(default=0, ge=0)
    notification_retention_days: int = Field(default=180, ge=1)

    # check_automation_rules: an edge unseen this long is offline (its rooms are then checked
    # in the cloud), and readings older than stale_after_s do not count.
    edge_offline_after_s: float = Field(default=300, gt=0)
    stale_after_s: float = Field(default=600, gt=0)
    band_window_s: float = Field(default=600, gt=0, description="mean over this for band checks")
