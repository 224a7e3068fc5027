"""Room telemetry: raw readings (cursor-paged) or buckets aggregated in SQL; JSON or CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from cloud.api.pagination import CURSOR_PATTERN, decode_cursor, encode_cursor
from cloud.api.routing import Call, Route
from cloud.api.schemas import Out, UtcIsoDateTime
from cloud.db import telemetry as telemetry_db
from shared.models import Id

BUCKETS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
MAX_BUCKETS = 50_000
DEFAULT_SPAN = timedelta(hours=24)
Metric = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class TelemetryQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    from_: UtcIsoDateTime | None = Field(
        default=None, alias="from", description="inclusive, ISO 8601; default: `to` minus 24 h"
    )
    to: UtcIsoDateTime | None = Field(default=None, description="exclusive, ISO 8601; default: now")
    metric: list[Metric] | None = Field(default=None, max_length=32, description="repeatable")
    device_id: Id | None = None
    bucket: Literal["1m", "5m", "1h", "1d"] | None = Field(
        default=None, description="aggregate into buckets of this width (omit for raw rows)"
    )
    agg: Literal["avg", "min", "max"] = "avg"
    limit: int = Field(default=1000, ge=1, le=10_000, description="raw rows per page")
    cursor: str | None = Field(default=None, max_length=512, pattern=CURSOR_PATTERN)
    format: Literal["json", "csv"] | None = Field(
        default=None, description="csv streams text/csv (as does Accept: text/csv)"
    )

    @model_validator(mode="after")
    def _span(self) -> Self:
        end = self.to or datetime.now(UTC)
        start = self.from_ or end - DEFAULT_SPAN
        if start >= end:
            raise ValueError("`from` must be before `to`")
        if self.bucket and (end - start) / BUCKETS[self.bucket] > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} buckets: widen `bucket` or narrow the range")
        self.from_, self.to = start, end
        return self


class TelemetryRow(Out):
    time: datetime = Field(description="reading time, or bucket start when bucketed")
    device_id: str
    metric: str
    value: float
    count: int | None = Field(default=None, description="readings in the bucket (bucketed only)")


class TelemetryOut(Out):
    room_id: str
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    bucket: str | None = None
    agg: str | None = None
    items: list[TelemetryRow]
    next_cursor: str | None = None


def _wants_csv(call: Call, q: TelemetryQuery) -> bool:
    if q.format is not None:
        return q.format == "csv"
    accept = call.request.headers.get("Accept", "")
    return "text/csv" in accept and "application/json" not in accept


async def _csv_response(call: Call, header: list[str]) -> web.StreamResponse:
    room_id = call.param("room_id")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{room_id}-telemetry.csv"',
        }
    )
    await response.prepare(call.request)
    await response.write((",".join(header) + "\r\n").encode())
    return response


def _csv_chunk(rows: list[Any]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow([v.isoformat() if isinstance(v, datetime) else v for v in row])
    return buf.getvalue().encode()


async def room_telemetry(call: Call) -> TelemetryOut | web.StreamResponse:
    """Readings of a room over a time range, raw or bucketed
    Raw rows are ordered by time and paged with `cursor`; with `bucket` the aggregation
    (`agg` of each bucket, per device and metric) runs in PostgreSQL with date_bin. CSV output
    (`?format=csv` or `Accept: text/csv`) streams every row in range without paging."""
    q: TelemetryQuery = call.query
    room_id = call.param("room_id")
    assert q.from_ is not None and q.to is not None
    span: dict[str, Any] = {
        "start": q.from_,
        "end": q.to,
        "metrics": q.metric,
        "device_id": q.device_id,
    }
    as_csv = _wants_csv(call, q)
    if q.bucket is not None:
        rows = await telemetry_db.buckets(
            call.db, call.farm_id, room_id, bucket=BUCKETS[q.bucket], **span
        )
        if as_csv:
            response = await _csv_response(call, ["bucket", "device_id", "metric", q.agg, "count"])
            values = [
                (r["bucket"], r["device_id"], r["metric"], r[q.agg], r["count"]) for r in rows
            ]
            await response.write(_csv_chunk(values))
            await response.write_eof()
            return response
        items = [
            # Rows straight from PostgreSQL's typed columns: construct, don't re-validate (a
            # 30-day hourly chart is thousands of rows).
            TelemetryRow.model_construct(
                time=r["bucket"],
                device_id=r["device_id"],
                metric=r["metric"],
                value=r[q.agg],
                count=r["count"],
            )
            for r in rows
        ]
        return TelemetryOut(
            room_id=room_id, from_=q.from_, to=q.to, bucket=q.bucket, agg=q.agg, items=items
        )
    if as_csv:
        response = await _csv_response(call, ["time", "device_id", "metric", "value"])
        async for batch in telemetry_db.stream_raw(call.db, call.farm_id, room_id, **span):
            await response.write(_csv_chunk(batch))
        await response.write_eof()
        return response
    after = decode_cursor(q.cursor, datetime, str, str)
    rows = await telemetry_db.raw(
        call.db, call.farm_id, room_id, after=after, limit=q.limit + 1, **span
    )
    cursor = None
    if len(rows) > q.limit:
        rows = rows[: q.limit]
        last = rows[-1]
        cursor = encode_cursor([last["time"], last["device_id"], last["metric"]])
    return TelemetryOut(
        room_id=room_id,
        from_=q.from_,
        to=q.to,
        items=[TelemetryRow.model_construct(**r) for r in rows],
        next_cursor=cursor,
    )


ROUTES = [
    Route(
        "GET",
        "/api/rooms/{room_id}/telemetry",
        room_telemetry,
        "room",
        query=TelemetryQuery,
        response=TelemetryOut,
        tag="telemetry",
        csv=True,
        errors=(422,),
    ),
]
