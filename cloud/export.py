"""``smartfarm cloud export``: a farm's readings over a time range to CSV or Parquet.

Rows stream from PostgreSQL and never sit in memory all at once: CSV is PostgreSQL's own
``COPY … TO STDOUT`` written through as it arrives, Parquet is read from a server-side cursor in
batches, each written as one row group. One row per reading and metric, as stored:
``time`` (UTC), ``room_id``, ``device_id``, ``metric``, ``value``, ordered by time.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TextIO

import psycopg
from aiohttp import web
from psycopg import sql

from cloud.config import CloudSettings
from cloud.db import telemetry as telemetry_db
from cloud.db.database import Database
from shared.errors import SmartfarmError

COLUMNS: Final = ("time", "room_id", "device_id", "metric", "value")
BATCH_ROWS: Final = 100_000
_CHUNK_LINES: Final = b"\n"

Format = Literal["csv", "parquet"]
Progress = Callable[[int, int], None]


class ExportError(SmartfarmError):
    """The export cannot be made as asked; the message names the option."""


@dataclass(frozen=True)
class ExportRequest:
    farm_id: str
    start: datetime
    end: datetime
    fmt: Format
    out: Path
    rooms: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    rows: int
    size_bytes: int


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ExportError(f"{option} {text!r}: not an ISO 8601 date or time"
                          " (e.g. 2024-05-01 or 2024-05-01T06:00:00Z)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _selection(conn: psycopg.Connection[Any], req: ExportRequest) -> dict[str, Any]:
    """Check the request against the database; the query parameters."""
    if req.start >= req.end:
        raise ExportError(f"--from {req.start.isoformat()} must be before"
                          f" --to {req.end.isoformat()}")
    if conn.execute("SELECT 1 FROM farms WHERE id = %s", (req.farm_id,)).fetchone() is None:
        raise ExportError(f"--farm {req.farm_id!r}: no such farm")
    rooms = [r[0] for r in conn.execute(
        "SELECT id FROM rooms WHERE farm_id = %s ORDER BY id", (req.farm_id,)).fetchall()]
    unknown = sorted(set(req.rooms) - set(rooms))
    if unknown:
        raise ExportError(f"--room {', '.join(unknown)}: not a room of farm {req.farm_id}")
    return {"farm_id": req.farm_id, "rooms": req.rooms or rooms, "start": req.start,
            "end": req.end, "metrics": req.metrics}


def _where(req: ExportRequest) -> sql.Composed:
    # Room ids are per farm: the farm is always part of the selection.
    parts = [sql.SQL("farm_id = %(farm_id)s AND room_id = ANY(%(rooms)s)"
                     " AND time >= %(start)s AND time < %(end)s")]
    if req.metrics:
        parts.append(sql.SQL("metric = ANY(%(metrics)s)"))
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts)


def count_rows(conn: psycopg.Connection[Any], req: ExportRequest, params: dict[str, Any]) -> int:
    query = sql.SQL("SELECT count(*) FROM sensor_data") + _where(req)
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def _csv(conn: psycopg.Connection[Any], req: ExportRequest, params: dict[str, Any],
         dest: Path, progress: Progress, total: int) -> int:
    # ISO 8601 with a Z, the API's format, whatever the session's time zone.
    select = sql.SQL(
        "SELECT to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS time,"
        " room_id, device_id, metric, value FROM sensor_data"
    ) + _where(req) + sql.SQL(" ORDER BY 1, room_id, device_id, metric")
    query = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(select)
    lines = 0
    with conn.cursor() as cur, cur.copy(query, params) as copy, dest.open("wb") as fh:
        for chunk in copy:
            fh.write(chunk)
            lines += bytes(chunk).count(_CHUNK_LINES)
            progress(max(0, lines - 1), total)
    return max(0, lines - 1)


def _parquet(conn: psycopg.Connection[Any], req: ExportRequest, params: dict[str, Any],
             dest: Path, progress: Progress, total: int, batch_rows: int) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError("--format parquet needs pyarrow (pip install pyarrow)") from None
    schema = pa.schema([("time", pa.timestamp("us", tz="UTC")), ("room_id", pa.string()),
                        ("device_id", pa.string()), ("metric", pa.string()),
                        ("value", pa.float64())])
    select = sql.SQL("SELECT time, room_id, device_id, metric, value FROM sensor_data") \
        + _where(req) + sql.SQL(" ORDER BY time, room_id, device_id, metric")
    done = 0
    with conn.transaction(), conn.cursor(name="smartfarm_export") as cur, \
            pq.ParquetWriter(dest, schema, compression="zstd") as writer:
        cur.itersize = batch_rows
        cur.execute(select, params)
        while rows := cur.fetchmany(batch_rows):
            columns = list(zip(*rows, strict=True))
            writer.write_batch(pa.record_batch(
                [pa.array(col, type=schema.field(i).type) for i, col in enumerate(columns)],
                schema=schema), row_group_size=batch_rows)
            done += len(rows)
            progress(done, total)
    return done


def export(dsn: str, req: ExportRequest, *, progress: Progress | None = None,
           batch_rows: int = BATCH_ROWS) -> ExportResult:
    """Write the readings ``req`` selects to ``req.out`` (aside first, renamed when complete)."""
    report = progress or (lambda done, total: None)
    partial = req.out.with_name(f".{req.out.name}.partial")
    try:
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            params = _selection(conn, req)
            total = count_rows(conn, req, params)
            req.out.parent.mkdir(parents=True, exist_ok=True)
            if req.fmt == "csv":
                rows = _csv(conn, req, params, partial, report, total)
            else:
                rows = _parquet(conn, req, params, partial, report, total, batch_rows)
        report(rows, rows)
        os.replace(partial, req.out)
    except psycopg.OperationalError as exc:
        raise ExportError(f"the database is unavailable: {exc}".strip()) from None
    finally:
        partial.unlink(missing_ok=True)
    return ExportResult(req.out, rows, req.out.stat().st_size)


# ---- `smartfarm cloud export` --------------------------------------------------------------------

def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="readings of a farm over [from, to) to CSV or Parquet")
    p.add_argument("--farm", required=True)
    p.add_argument("--from", dest="start", required=True, metavar="ISO",
                   help="first instant, included (no offset: UTC)")
    p.add_argument("--to", dest="end", required=True, metavar="ISO", help="end, excluded")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.add_argument("--out", type=Path, required=True, metavar="PATH")
    p.add_argument("--room", action="append", default=[], help="only this room (repeatable)")
    p.add_argument("--metric", action="append", default=[],
                   help="only this metric, e.g. humidity_pct (repeatable)")


def progress_bar(stream: TextIO, *, every_s: float = 0.2) -> Progress:
    """A one-line bar, redrawn at most every ``every_s`` and at the end."""
    state = {"last": 0.0, "ended": False}

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        final = done >= total
        if state["ended"] or (not final and now - state["last"] < every_s):
            return
        state["last"], state["ended"] = now, final
        share = min(1.0, done / total) if total else 1.0
        stream.write(f"\r  export [{'#' * int(share * 30):<30}] {done:>11,}/{total:,} rows")
        if final:
            stream.write("\n")
        stream.flush()

    return show


async def export_main(settings: CloudSettings, args: argparse.Namespace) -> int:
    from cloud.db.embedded import resolve_dsn

    req = ExportRequest(
        farm_id=args.farm, start=parse_time(args.start, "--from"),
        end=parse_time(args.end, "--to"), fmt=args.format, out=args.out,
        rooms=args.room, metrics=args.metric,
    )
    dsn, embedded = await resolve_dsn(settings)
    try:
        result = await asyncio.to_thread(export, dsn, req, progress=progress_bar(sys.stderr))
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    print(f"exported {result.rows:,} rows to {result.path} ({result.size_bytes / 1e6:.1f} MB)")
    return 0


# ---- a room's readings from the page (GET /api/rooms/{room_id}/export) -------------------------

Layout = Literal["long", "wide"]
TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"  # one format for every time in a CSV: UTC, µs, Z
PARQUET_TYPE: Final = "application/vnd.apache.parquet"
_SPOOL_BYTES: Final = 8 << 20
_SEND_BYTES: Final = 256 << 10


@dataclass(frozen=True)
class RoomExport:
    farm_id: str
    room_id: str
    start: datetime
    end: datetime
    metrics: list[str]
    fmt: Format
    layout: Layout
    bucket: timedelta | None = None

    @property
    def filename(self) -> str:
        stamp = self.start.astimezone(UTC).strftime("%Y%m%dT%H%MZ")
        span = self.end - self.start
        hours = span.total_seconds() / 3600
        length = f"{hours / 24:g}d" if hours >= 48 else f"{hours:g}h"
        return f"{self.room_id}-{stamp}-{length}-{self.layout}.{self.fmt}"

    def header(self) -> list[str]:
        if self.layout == "wide":
            return ["time", "device_id", *self.metrics]
        return ["time", "device_id", "metric", "value"]


def iso_z(at: datetime) -> str:
    """A time in the export's one format: UTC, microseconds, a Z."""
    return at.astimezone(UTC).strftime(TIME_FORMAT)


def widen(
    rows: Iterable[tuple[datetime, str, str, float]],
    metrics: list[str],
    carry: list[Any] | None = None,
) -> tuple[list[list[Any]], list[Any] | None]:
    """Long rows ordered by (time, device) → wide rows ``[time, device, v_metric1, …]`` (None
    where a metric has no value). The last row may continue in the next batch: it is returned as
    ``carry`` to pass back in (and to emit once the rows are done)."""
    column = {metric: i + 2 for i, metric in enumerate(metrics)}
    out: list[list[Any]] = []
    current = carry
    for at, device, metric, value in rows:
        if current is None or current[0] != at or current[1] != device:
            if current is not None:
                out.append(current)
            current = [at, device, *([None] * len(metrics))]
        i = column.get(metric)
        if i is not None:
            current[i] = value
    return out, current


async def _rows(db: Database, req: RoomExport) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Batches of (time, device_id, metric, value), ordered by time, device, metric."""
    span: dict[str, Any] = {
        "start": req.start, "end": req.end, "metrics": req.metrics, "device_id": None,
    }
    if not req.metrics:
        return
    if req.bucket is None:
        async for batch in telemetry_db.stream_raw(db, req.farm_id, req.room_id, **span):
            yield [tuple(r) for r in batch]
        return
    rows = await telemetry_db.buckets(db, req.farm_id, req.room_id, bucket=req.bucket, **span)
    for i in range(0, len(rows), 5_000):
        yield [(r["bucket"], r["device_id"], r["metric"], r["avg"]) for r in rows[i:i + 5_000]]


def _csv_text(rows: Iterable[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for row in rows:
        writer.writerow(
            [iso_z(v) if isinstance(v, datetime) else ("" if v is None else v) for v in row]
        )
    return buf.getvalue().encode()


async def _tables(
    db: Database, req: RoomExport
) -> AsyncIterator[list[list[Any]]]:
    """Rows in the request's layout, in batches."""
    carry: list[Any] | None = None
    async for batch in _rows(db, req):
        if req.layout == "long":
            yield [list(r) for r in batch]
            continue
        wide, carry = widen(batch, req.metrics, carry)
        if wide:
            yield wide
    if carry is not None:
        yield [carry]


async def stream_room(
    request: web.Request, db: Database, req: RoomExport
) -> web.StreamResponse:
    """Answer ``request`` with the export: CSV streams as rows arrive; Parquet is written to a
    spooled temporary file in row groups, then sent."""
    headers = {"Content-Disposition": f'attachment; filename="{req.filename}"',
               "Cache-Control": "no-store"}
    if req.fmt == "csv":
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/csv; charset=utf-8"})
        await response.prepare(request)
        await response.write(_csv_text([req.header()]))
        async for rows in _tables(db, req):
            await response.write(_csv_text(rows))
        await response.write_eof()
        return response
    import pyarrow as pa
    import pyarrow.parquet as pq

    if req.layout == "wide":
        fields = [("time", pa.timestamp("us", tz="UTC")), ("device_id", pa.string())]
        fields += [(metric, pa.float64()) for metric in req.metrics]
    else:
        fields = [("time", pa.timestamp("us", tz="UTC")), ("device_id", pa.string()),
                  ("metric", pa.string()), ("value", pa.float64())]
    schema = pa.schema(fields)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        writer = pq.ParquetWriter(spool, schema, compression="zstd")
        try:
            async for rows in _tables(db, req):
                columns = list(zip(*rows, strict=True))
                batch = pa.record_batch(
                    [pa.array(col, type=schema.field(i).type) for i, col in enumerate(columns)],
                    schema=schema)
                await asyncio.to_thread(writer.write_batch, batch)
        finally:
            writer.close()
        size = spool.tell()
        spool.seek(0)
        response = web.StreamResponse(
            headers={**headers, "Content-Type": PARQUET_TYPE, "Content-Length": str(size)})
        await response.prepare(request)
        while chunk := spool.read(_SEND_BYTES):
            await response.write(chunk)
        await response.write_eof()
        return response
