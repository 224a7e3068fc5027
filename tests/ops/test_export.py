"""`smartfarm cloud export`: a farm's readings over [from, to) to CSV and Parquet, read back and
compared with the database; bad arguments give one clear line and a non-zero exit."""
from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from cloud.export import ExportRequest, export

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 5, 1, tzinfo=UTC)
METRICS = ("co2_ppm", "humidity_pct", "temperature_c")


@pytest.fixture
def farm_db(db_dsn: str) -> str:
    """Two farms; farm-x has rooms x-a and x-b, two devices each, 3 metrics every minute for
    10 hours; farm-y has the same kind of data, which must never leak into farm-x's export."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for farm, rooms in (("farm-x", ("x-a", "x-b")), ("farm-y", ("y-a",))):
            conn.execute("INSERT INTO farms (id, name) VALUES (%s, %s)", (farm, farm))
            for room in rooms:
                conn.execute("INSERT INTO rooms (id, farm_id, species, stage)"
                             " VALUES (%s, %s, 'oyster', 'fruiting')", (room, farm))
        with conn.cursor() as cur, cur.copy("COPY sensor_data"
                " (farm_id, time, room_id, device_id, metric, value) FROM STDIN") as copy:
            for minute in range(600):
                at = T0 + timedelta(minutes=minute)
                for farm, room in (("farm-x", "x-a"), ("farm-x", "x-b"), ("farm-y", "y-a")):
                    for dev in (1, 2):
                        for k, metric in enumerate(METRICS):
                            copy.write_row((farm, at, room, f"{room}-s{dev}", metric,
                                            minute / 7 + k * 100.1 + dev / 3))
    return db_dsn


def db_rows(dsn: str, start: datetime, end: datetime, rooms: tuple[str, ...],
            metrics: tuple[str, ...] = METRICS) -> list[tuple[datetime, str, str, str, float]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT time, room_id, device_id, metric, value FROM sensor_data"
            " WHERE room_id = ANY(%s) AND metric = ANY(%s) AND time >= %s AND time < %s"
            " ORDER BY time, room_id, device_id, metric",
            (list(rooms), list(metrics), start, end)).fetchall()


def read_csv(path: Path) -> list[tuple[datetime, str, str, str, float]]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["time", "room_id", "device_id", "metric", "value"]
        return [(datetime.fromisoformat(t), r, d, m, float(v)) for t, r, d, m, v in reader]


def test_csv_and_parquet_hold_exactly_the_farms_rows(farm_db, cloud_cli, tmp_path, capsys):
    start, end = "2024-05-01T02:00:00Z", "2024-05-01T07:30:00+00:00"
    expected = db_rows(farm_db, T0 + timedelta(hours=2), T0 + timedelta(hours=7.5),
                       ("x-a", "x-b"))
    assert len(expected) == 330 * 2 * 2 * 3

    out = tmp_path / "x.csv"
    assert cloud_cli(farm_db, "export", "--farm", "farm-x", "--from", start, "--to", end,
                     "--format", "csv", "--out", str(out)) == 0
    io = capsys.readouterr()
    assert f"exported {len(expected):,} rows to {out}" in io.out
    assert f"{len(expected):,}/{len(expected):,} rows" in io.err  # the progress bar's end
    rows = read_csv(out)
    assert rows == expected
    assert rows[0][0].tzinfo is not None and out.read_text().splitlines()[1].startswith(
        "2024-05-01T02:00:00.000000Z,x-a,x-a-s1,co2_ppm,")

    pq_out = tmp_path / "x.parquet"
    assert cloud_cli(farm_db, "export", "--farm", "farm-x", "--from", start, "--to", end,
                     "--format", "parquet", "--out", str(pq_out)) == 0
    table = pq.read_table(pq_out)
    assert table.column_names == ["time", "room_id", "device_id", "metric", "value"]
    assert str(table.schema.field("time").type) == "timestamp[us, tz=UTC]"
    assert [tuple(r.values()) for r in table.to_pylist()] == expected


def test_parquet_is_written_in_row_groups_and_filters_apply(farm_db, cloud_cli, tmp_path,
                                                            capsys):
    req = ExportRequest(farm_id="farm-x", start=T0, end=T0 + timedelta(hours=10), fmt="parquet",
                        out=tmp_path / "b.parquet", rooms=["x-b"], metrics=["humidity_pct"])
    seen: list[tuple[int, int]] = []
    result = export(farm_db, req, progress=lambda done, total: seen.append((done, total)),
                    batch_rows=250)
    expected = db_rows(farm_db, T0, T0 + timedelta(hours=10), ("x-b",), ("humidity_pct",))
    assert result.rows == len(expected) == 1200
    parquet = pq.ParquetFile(req.out)
    assert parquet.metadata.num_row_groups == 1200 // 250 + 1
    assert max(parquet.metadata.row_group(i).num_rows for i in range(5)) == 250
    assert [tuple(r.values()) for r in parquet.read().to_pylist()] == expected
    assert [d for d, _ in seen] == [250, 500, 750, 1000, 1200, 1200]
    assert {t for _, t in seen} == {1200}

    # Same filters on the CLI, in CSV; an empty range is a header-only file.
    out = tmp_path / "b.csv"
    assert cloud_cli(farm_db, "export", "--farm", "farm-x", "--from", "2024-05-01",
                     "--to", "2024-05-02", "--room", "x-b", "--metric", "humidity_pct",
                     "--out", str(out)) == 0
    assert read_csv(out) == expected
    empty = tmp_path / "none.csv"
    assert cloud_cli(farm_db, "export", "--farm", "farm-x", "--from", "2023-01-01",
                     "--to", "2023-02-01", "--out", str(empty)) == 0
    assert read_csv(empty) == []
    assert "exported 0 rows" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--farm", "farm-x", "--from", "2024-05-02", "--to", "2024-05-01"], "must be before --to"),
    (["--farm", "farm-x", "--from", "2024-05-01", "--to", "2024-05-01"], "must be before --to"),
    (["--farm", "nope", "--from", "2024-05-01", "--to", "2024-05-02"], "'nope': no such farm"),
    (["--farm", "farm-x", "--from", "yesterday", "--to", "2024-05-02"],
     "--from 'yesterday': not an ISO 8601 date or time"),
    (["--farm", "farm-x", "--from", "2024-05-01", "--to", "2024-05-02", "--room", "y-a"],
     "--room y-a: not a room of farm farm-x"),
])
def test_bad_arguments_exit_non_zero_with_a_clear_line(farm_db, cloud_cli, tmp_path, capsys,
                                                      args, message):
    out = tmp_path / "never.csv"
    assert cloud_cli(farm_db, "export", *args, "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_an_unknown_format_is_refused_by_the_parser(farm_db, cloud_cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cloud_cli(farm_db, "export", "--farm", "farm-x", "--from", "2024-05-01", "--to",
                  "2024-05-02", "--format", "xlsx", "--out", str(tmp_path / "x"))
    assert exc.value.code == 2
    assert "invalid choice: 'xlsx'" in capsys.readouterr().err
