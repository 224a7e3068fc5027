"""Chart history beyond readings: actuator on/off intervals with the room's bands per stage,
compact column-wise chart data, and the room's readings as a CSV or Parquet file (long or wide)
for the page's download buttons."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud import export
from cloud.api.routing import Call, Route
from cloud.api.schemas import Out, UtcIsoDateTime
from cloud.api.telemetry import BUCKETS, MAX_BUCKETS, Metric
from cloud.db import history as history_db
from cloud.db import telemetry as telemetry_db
from cloud.errors import NotFound
from shared.profiles import BANDED_METRICS, profile_for
from shared.vocabulary import STAGES

DEFAULT_SPAN = timedelta(hours=24)
LOGBOOK_PATH = "/api/rooms/{room_id}/logbook"
MAX_SPAN = timedelta(days=400)


class _Range(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    from_: UtcIsoDateTime | None = Field(
        default=None, alias="from", description="inclusive, ISO 8601; default: `to` minus 24 h"
    )
    to: UtcIsoDateTime | None = Field(default=None, description="exclusive, ISO 8601; default: now")

    @model_validator(mode="after")
    def _span(self) -> Self:
        end = self.to or datetime.now(UTC)
        start = self.from_ or end - DEFAULT_SPAN
        if start >= end:
            raise ValueError("`from` must be before `to`")
        if end - start > MAX_SPAN:
            raise ValueError(f"`from` to `to` spans more than {MAX_SPAN.days} days")
        self.from_, self.to = start, end
        return self


class HistoryQuery(_Range):
    pass


class BandOut(Out):
    min: float | None
    max: float | None


class Interval(Out):
    start: datetime = Field(description="switched on (or the range's start when already on)")
    end: datetime = Field(description="switched off (or the range's end when still on)")
    ongoing: bool = Field(description="still on at the range's end")


class ActuatorHistory(Out):
    device_id: str
    name: str
    role: str = Field(description="the actuator role: humidifier, exhaust_fan, heater, light")
    on_at_start: bool | None = Field(description="state when the range starts (null: unknown)")
    on_at_end: bool | None = Field(description="state when the range ends (null: unknown)")
    known_from: datetime | None = Field(
        description="from when the state is known: the range's start, the first command in it,"
        " or null when nothing is known"
    )
    switches: int = Field(description="changes of state inside the range")
    intervals: list[Interval]


class HistoryOut(Out):
    room_id: str
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    species: str
    stage: str
    stage_started: datetime
    bands_by_stage: dict[str, dict[str, BandOut]] = Field(
        description="per stage, the species profile's target band per banded metric"
    )
    actuators: list[ActuatorHistory]
    device_names: dict[str, str] = Field(description="every device of the room: id → name")
    logbook: bool = Field(
        description="this cloud has the room logbook (GET /api/rooms/{room_id}/logbook), whose"
        " entries a chart shows as markers"
    )


def _is_on(action: str, value: Any) -> bool:
    if action == "set":
        try:
            return float(value) > 0
        except (TypeError, ValueError):
            return False
    return action == "on"


def _status_on(state: Any) -> bool | None:
    if isinstance(state, Mapping):
        for key in ("on", "state", "power"):
            value = state.get(key)
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("on", "off"):
                return value.lower() == "on"
    return None


def intervals(
    events: list[tuple[datetime, bool]], *, initial: bool | None, start: datetime, end: datetime
) -> tuple[list[Interval], int, bool | None, datetime | None]:
    """On-intervals within [start, end) from time-ordered (time, on) events and the state at
    ``start``; also the number of changes of state, the state at ``end`` and from when the state
    is known."""
    out: list[Interval] = []
    state, since, switches = initial, start, 0
    known = start if initial is not None else None
    for at, on in events:
        if at < start or at >= end:
            continue
        if known is None:
            known = at
        if state is not None and on != state:
            switches += 1
        if on and not state:
            since = at
        elif not on and state:
            if at > since:
                out.append(Interval(start=since, end=at, ongoing=False))
        state = on
    if state:
        out.append(Interval(start=since, end=end, ongoing=True))
    return out, switches, state, known


def _has_route(call: Call, path: str) -> bool:
    """Whether the app serves GET ``path`` (a route template): the page asks only for what
    exists, so a cloud without a feature costs no failed request."""
    for resource in call.app.router.resources():
        if resource.canonical == path and any(r.method == "GET" for r in resource):
            return True
    return False


def bands_by_stage(species: str) -> dict[str, dict[str, BandOut]]:
    out: dict[str, dict[str, BandOut]] = {}
    for stage in STAGES:
        try:
            profile = profile_for(species, stage)  # type: ignore[arg-type]
        except KeyError:
            continue
        out[stage] = {
            metric: BandOut(min=band.min, max=band.max)
            for metric in BANDED_METRICS
            if (band := profile.band(metric)) is not None
        }
    return out


async def actuator_history(call: Call) -> HistoryOut:
    """Each actuator's on/off intervals over a time range, with the bands of every stage
    The intervals come from the commands each actuator acknowledged (automation's, people's and
    the edge's own), the state at the range's start from the last one before it; a status report
    newer than the last command counts as a switch at its time. `bands_by_stage` gives the
    species profile's target bands for every stage, so a chart can draw the band of the stage
    that held at each moment."""
    q: HistoryQuery = call.query
    room_id = call.param("room_id")
    assert q.from_ is not None and q.to is not None
    data = await history_db.read(call.db, call.farm_id, room_id, start=q.from_, end=q.to)
    if not data:
        raise NotFound(f"room {room_id} not found")
    room = data["room"]
    before = {r["device_id"]: _is_on(r["action"], r["value"]) for r in data["before"]}
    last_command: dict[str, datetime] = {r["device_id"]: r["at"] for r in data["before"]}
    events: dict[str, list[tuple[datetime, bool]]] = {}
    for r in data["switches"]:
        events.setdefault(r["device_id"], []).append((r["at"], _is_on(r["action"], r["value"])))
        last_command[r["device_id"]] = r["at"]
    actuators = []
    for a in data["actuators"]:
        device = a["id"]
        mine = events.get(device, [])
        initial = before.get(device)
        reported = _status_on(a["state"]) if a["status_at"] is not None else None
        status_at = a["status_at"]
        if reported is not None and status_at is not None:
            newest = last_command.get(device)
            if newest is None or status_at > newest:
                if status_at < q.from_:
                    initial = reported
                else:
                    mine = [*mine, (status_at, reported)]
        spans, switches, at_end, known = intervals(
            mine, initial=initial, start=q.from_, end=q.to
        )
        actuators.append(
            ActuatorHistory(
                device_id=device,
                name=a["name"] or device,
                role=a["actuator"],
                on_at_start=initial,
                on_at_end=at_end,
                known_from=known,
                switches=switches,
                intervals=spans,
            )
        )
    return HistoryOut(
        room_id=room_id,
        from_=q.from_,
        to=q.to,
        species=room["species"],
        stage=room["stage"],
        stage_started=room["stage_started"],
        bands_by_stage=bands_by_stage(room["species"]),
        actuators=actuators,
        device_names=data["names"],
        logbook=_has_route(call, LOGBOOK_PATH),
    )


class SeriesQuery(_Range):
    metric: list[Metric] | None = Field(
        default=None, max_length=32, description="repeatable; default: every metric of the room"
    )
    bucket: Literal["1m", "5m", "1h", "1d"] = Field(
        default="5m", description="the width of each point: its average, minimum and maximum"
    )

    @model_validator(mode="after")
    def _buckets(self) -> Self:
        assert self.from_ is not None and self.to is not None
        if (self.to - self.from_) / BUCKETS[self.bucket] > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} buckets: widen `bucket` or narrow the range")
        return self


class Series(Out):
    device_id: str
    metric: str
    t: list[int] = Field(description="bucket starts, unix seconds (UTC)")
    avg: list[float]
    min: list[float]
    max: list[float]


class SeriesOut(Out):
    room_id: str
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    bucket: str
    series: list[Series]


async def room_series(call: Call) -> SeriesOut:
    """Chart data: per device and metric, columns of bucket times, averages, minima and maxima
    The same buckets as `/telemetry?bucket=…`, column-wise: a device and metric are named once
    per series, not once per point, and times are integers (a 30-day hourly chart of six
    metrics is ~5× smaller than the row form, before compression)."""
    q: SeriesQuery = call.query
    room_id = call.param("room_id")
    assert q.from_ is not None and q.to is not None
    rows = await telemetry_db.buckets(
        call.db,
        call.farm_id,
        room_id,
        start=q.from_,
        end=q.to,
        bucket=BUCKETS[q.bucket],
        metrics=q.metric,
        device_id=None,
    )
    series: dict[tuple[str, str], Series] = {}
    for r in rows:
        key = (r["device_id"], r["metric"])
        found = series.get(key)
        if found is None:
            found = series[key] = Series.model_construct(
                device_id=key[0], metric=key[1], t=[], avg=[], min=[], max=[]
            )
        found.t.append(int(r["bucket"].timestamp()))
        found.avg.append(round(float(r["avg"]), 4))
        found.min.append(float(r["min"]))
        found.max.append(float(r["max"]))
    return SeriesOut(
        room_id=room_id,
        from_=q.from_,
        to=q.to,
        bucket=q.bucket,
        series=sorted(series.values(), key=lambda s: (s.metric, s.device_id)),
    )


class ExportQuery(_Range):
    metric: list[Metric] | None = Field(
        default=None, max_length=32, description="repeatable; default: every metric of the room"
    )
    format: Literal["csv", "parquet"] = "csv"
    layout: Literal["long", "wide"] = Field(
        default="long",
        description="long: one row per reading and metric; wide: one row per time and device,"
        " one column per metric",
    )
    bucket: Literal["1m", "5m", "1h", "1d"] | None = Field(
        default=None, description="averages over buckets of this width (omit for every reading)"
    )

    @model_validator(mode="after")
    def _buckets(self) -> Self:
        assert self.from_ is not None and self.to is not None
        if self.bucket and (self.to - self.from_) / BUCKETS[self.bucket] > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} buckets: widen `bucket` or narrow the range")
        return self


async def room_export(call: Call) -> web.StreamResponse:
    """The room's readings over a range as a CSV or Parquet file
    Long layout: `time, device_id, metric, value`, one row per reading and metric; wide layout:
    `time, device_id` and one column per metric, one row per time and device. Times are UTC,
    ISO 8601 (`2024-05-01T06:00:00.000000Z`) in CSV and timestamp[us, UTC] in Parquet. With
    `bucket`, each row is a bucket's average (time: the bucket's start)."""
    q: ExportQuery = call.query
    room_id = call.param("room_id")
    assert q.from_ is not None and q.to is not None
    metrics = q.metric or await telemetry_db.room_metrics(call.db, call.farm_id, room_id)
    req = export.RoomExport(
        farm_id=call.farm_id,
        room_id=room_id,
        start=q.from_,
        end=q.to,
        metrics=sorted(set(metrics)),
        fmt=q.format,
        layout=q.layout,
        bucket=BUCKETS[q.bucket] if q.bucket else None,
    )
    return await export.stream_room(call.request, call.db, req)


ROUTES = [
    Route(
        "GET",
        "/api/rooms/{room_id}/actuators/history",
        actuator_history,
        "room",
        query=HistoryQuery,
        response=HistoryOut,
        tag="telemetry",
        errors=(422,),
    ),
    Route(
        "GET",
        "/api/rooms/{room_id}/series",
        room_series,
        "room",
        query=SeriesQuery,
        response=SeriesOut,
        tag="telemetry",
        errors=(422,),
    ),
    Route(
        "GET",
        "/api/rooms/{room_id}/export",
        room_export,
        "room",
        query=ExportQuery,
        tag="telemetry",
        errors=(422,),
    ),
]
