-- sensor_data becomes a table range-partitioned by time, one partition per UTC month (issue 15),
-- so retention drops a whole month's partition in milliseconds instead of deleting millions of
-- rows (and their index entries and WAL), and a month's chart reads one or two partitions.
--
-- Monthly, not daily: the default raw retention is 90 days, so a farm keeps ~4 live partitions
-- plus the ones made ahead; daily partitions would be ~95 (thousands with retention off) for
-- the planner to consider on every statement, and a 30-day chart would touch 31 of them. A
-- month of one large farm (100 rooms × 6 metrics every 10 s) is ~155M rows, still a partition
-- whose indexes are built and dropped comfortably.
--
-- Partitions live in their own schema, `telemetry`, named sensor_data_YYYYMM (UTC): nothing
-- reads them by name except retention (cloud/db/partitions.py), and `public` keeps one table per
-- concept. A DEFAULT partition catches a reading whose month has no partition yet (an edge back
-- after a long outage with old readings, or a clock far ahead): it is stored, never refused,
-- and the hourly partition job moves it into a partition of its own month.
--
-- The hourly rollup trigger (0006/0011) is a statement trigger with a transition table on the
-- parent, so it sees every row of a COPY or INSERT routed to any partition, as before. Moving
-- rows between partitions (below, and sensor_data_add_month) writes to the partitions
-- directly, which does not fire it: those rows are already rolled up.

CREATE SCHEMA telemetry;

-- The partition of the UTC month that contains `at`, made if missing (with that month's rows
-- moved out of the DEFAULT partition); its name, or NULL when it already existed. ATTACH takes
-- a lock that lets readers and writers of other partitions go on (CREATE … PARTITION OF would
-- block every reader of sensor_data while it ran).
CREATE FUNCTION sensor_data_add_month(at timestamptz) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := date_trunc('month', at, 'UTC');
    hi timestamptz := ((lo AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    part text := 'sensor_data_' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMM');
BEGIN
    -- One maker at a time (two workers, or retention dropping while this creates).
    PERFORM pg_advisory_xact_lock(hashtext('smartfarm.sensor_data_partitions'));
    IF to_regclass(format('telemetry.%I', part)) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('CREATE TABLE telemetry.%I (LIKE sensor_data INCLUDING ALL)', part);
    IF to_regclass('telemetry.sensor_data_default') IS NOT NULL THEN
        -- Writers routed to the default wait, so none of that month's rows lands there between
        -- the move and the attach (which checks the default holds none).
        LOCK TABLE telemetry.sensor_data_default IN SHARE ROW EXCLUSIVE MODE;
        EXECUTE format(
            'WITH moved AS (DELETE FROM telemetry.sensor_data_default'
            '  WHERE time >= %L AND time < %L'
            '  RETURNING time, room_id, device_id, metric, value, farm_id)'
            ' INSERT INTO telemetry.%I (time, room_id, device_id, metric, value, farm_id)'
            ' SELECT * FROM moved', lo, hi, part);
    END IF;
    EXECUTE format('ALTER TABLE sensor_data ATTACH PARTITION telemetry.%I FOR VALUES FROM (%L) TO (%L)',
                   part, lo, hi);
    RETURN part;
END $$;

-- ---- the table as it is, out of the way ----------------------------------------------------------
ALTER TABLE sensor_data RENAME TO sensor_data_unpartitioned;
DROP TRIGGER sensor_data_fold_hourly ON sensor_data_unpartitioned;
DROP INDEX sensor_data_room_metric_time_idx, sensor_data_time_brin;

-- ---- the partitioned table: same name, columns, indexes and trigger --------------------------------
CREATE TABLE sensor_data (
    time      timestamptz NOT NULL,
    room_id   text NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    value     double precision NOT NULL,
    farm_id   text NOT NULL
) PARTITION BY RANGE (time);

-- A month per existing month of readings (only those: a stray reading from 2001 makes one
-- partition, not three hundred), the current month, the one before (a fresh install seeded with
-- the last 30 days) and the next three; indexes are built after the rows are in, which is faster
-- than maintaining them row by row.
SELECT sensor_data_add_month(m)
FROM (SELECT DISTINCT date_trunc('month', time, 'UTC') AS m FROM sensor_data_unpartitioned
      UNION
      SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => k))
             AT TIME ZONE 'UTC'
      FROM generate_series(-1, 3) AS k) AS months
ORDER BY m;
CREATE TABLE telemetry.sensor_data_default PARTITION OF sensor_data DEFAULT;

INSERT INTO sensor_data (time, room_id, device_id, metric, value, farm_id)
SELECT time, room_id, device_id, metric, value, farm_id FROM sensor_data_unpartitioned;
DROP TABLE sensor_data_unpartitioned;

CREATE INDEX sensor_data_room_metric_time_idx
    ON sensor_data (farm_id, room_id, metric, time) INCLUDE (device_id, value);
CREATE INDEX sensor_data_time_brin ON sensor_data USING brin (time);

CREATE TRIGGER sensor_data_fold_hourly AFTER INSERT ON sensor_data
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sensor_hourly_fold();
