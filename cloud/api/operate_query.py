"""Query pieces shared by the operate routes (alarms, command audit, logbook): a time span
given as ``from``/``to`` (ISO 8601; an offset-less time is UTC)."""

from __future__ import annotations

from datetime import datetime

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from cloud.api.pagination import PageQuery
from cloud.api.schemas import UtcIsoDateTime


class SpanQuery(PageQuery):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    from_: UtcIsoDateTime | None = Field(default=None, alias="from", description="ISO 8601")
    to: UtcIsoDateTime | None = Field(default=None, description="ISO 8601, after `from`")

    @field_validator("from_", "to")
    @classmethod
    def _utc(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if info.field_name == "to" and value is not None:
            start = info.data.get("from_")
            if start is not None and start >= value:
                raise ValueError("`to` must be after `from`")
        return value
