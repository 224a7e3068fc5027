-- Readings, one row per metric ("narrow"): devices send any subset of metrics and unknown metrics
-- are kept, so a metric column per name would need ALTERs or a jsonb catch-all. Queries are per
-- room and metric over a time range: served by the (room_id, metric, time) index, which carries
-- device_id and value so bucketing is an index-only scan. BRIN on time serves retention and
-- farm-wide time scans at a tiny size, since rows arrive in time order.
CREATE TABLE sensor_data (
    time      timestamptz NOT NULL,
    room_id   text NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    value     double precision NOT NULL
);
CREATE INDEX sensor_data_room_metric_time_idx
    ON sensor_data (room_id, metric, time) INCLUDE (device_id, value);
CREATE INDEX sensor_data_time_brin ON sensor_data USING brin (time);

-- Latest value per device and metric, upserted with every insert batch, so "latest" is a
-- primary-key lookup instead of a scan of sensor_data.
CREATE TABLE sensor_latest (
    device_id text NOT NULL,
    metric    text NOT NULL,
    room_id   text NOT NULL,
    time      timestamptz NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (device_id, metric)
);
