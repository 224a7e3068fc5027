"""Settings of the AI recommendations (the ``[ai]`` section of the cloud config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class BedrockConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(default=None, description="unset: the AWS default chain's region")
    # Any Bedrock model that supports the Converse API; Claude by default.
    model_id: str = "anthropic.claude-3-5-sonnet-20240620-v1:0"
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    max_tokens: int = Field(default=2000, ge=100, le=8192)
    temperature: float = Field(default=0.2, ge=0, le=1)
    timeout_s: float = Field(default=60, gt=0, le=600)
    # Throttling and 5xx answers are retried with jittered exponential backoff.
    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff_base_s: float = Field(default=1.0, ge=0, le=60)
    backoff_max_s: float = Field(default=20, ge=0, le=600)
    # When Bedrock fails for good (or answers nonsense), store the built-in advisor's advice
    # instead of nothing; the run still records Bedrock's error.
    fallback_to_builtin: bool = True


class AiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Literal["builtin", "bedrock"] = "builtin"
    bedrock: BedrockConfig = Field(default_factory=BedrockConfig)
    # generate_ai_recommendations for every active room on this schedule (cron, UTC).
    schedule: str = "0 */4 * * *"
    window_hours: float = Field(default=24, gt=0, le=24 * 14)
    max_recommendations: int = Field(default=8, ge=1, le=50)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter  # procrastinate's own cron parser

        if not croniter.is_valid(value):
            raise ValueError("not a cron expression (e.g. '0 */4 * * *')")
        return value
