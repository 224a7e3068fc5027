-- The edge's SQLite schema as ordered migrations; `PRAGMA user_version` records the last applied.
--
-- Each migration starts with a line `-- migration N: title` (N = 1, 2, 3… with no gaps). Never
-- edit a migration that has shipped: add a new one at the end. db.py applies every migration above
-- the file's user_version, each in its own transaction together with the version bump.
--
-- Timestamps are unix seconds (REAL, UTC). JSON columns hold compact JSON text.

-- migration 1: readings, quarantine, device status, commands, alerts, automation state

-- A series is one device, in one room, reporting one ordered set of metrics. Readings refer to it
-- by a small integer and store only their values (a JSON array in the series' metric order), so a
-- six-metric reading costs ~80 bytes on disk instead of ~250 with names and ids repeated per row.
CREATE TABLE series (
    key INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    metrics TEXT NOT NULL,             -- JSON array of metric names, e.g. ["co2_ppm","humidity_pct"]
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX series_identity ON series (device_id, room_id, metrics);
CREATE INDEX series_room ON series (room_id);

-- One row per accepted telemetry message. `id` grows with arrival order (the outbox can refer to
-- it). received_at is stored as its offset from ts in ms (`recv_ms`: 1-3 bytes instead of 8).
CREATE TABLE readings (
    id INTEGER PRIMARY KEY,
    series INTEGER NOT NULL REFERENCES series (key),
    ts REAL NOT NULL,                  -- device time, or the edge's receive time when replaced
    recv_ms INTEGER NOT NULL,          -- round((received_at - ts) * 1000)
    ts_replaced INTEGER NOT NULL,      -- 1 when the device sent no / an implausible timestamp
    vals TEXT NOT NULL                 -- JSON array of numbers in series.metrics order
);
-- Time first, not series first: inserts then land on the last pages of the index (few pages
-- dirtied per group commit, pages filled densely), it still dedups QoS 1 redeliveries by
-- (device, metric set, device timestamp), and time-range queries filter series inside the index.
CREATE UNIQUE INDEX readings_ts_series ON readings (ts, series);

-- Newest reading per series, upserted with each accepted reading: O(1) "latest" for the API and
-- the automation without scanning readings.
CREATE TABLE latest (
    series INTEGER PRIMARY KEY REFERENCES series (key),
    ts REAL NOT NULL,
    vals TEXT NOT NULL,
    reading_id INTEGER NOT NULL
);

-- Messages the ingest refused: raw topic and payload (bounded) with the reason.
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    topic TEXT NOT NULL,               -- truncated to 512 characters
    payload BLOB NOT NULL,             -- truncated to store.quarantine_max_payload bytes
    original_size INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX quarantine_received ON quarantine (received_at);

-- Last known state of each device, from its status messages; last_seen also moves with telemetry
-- and acks (at most once a minute per device, to spare the SD card).
CREATE TABLE device_status (
    device_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    online INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '{}',  -- JSON object from the device's last non-empty status
    firmware TEXT,
    rssi_dbm REAL,
    uptime_s REAL,
    status_at REAL,                    -- receive time of the last status message
    last_seen REAL NOT NULL            -- receive time of the last message of any kind
) WITHOUT ROWID;

-- Commands sent to actuators and their lifecycle (edge/store/commands.py).
CREATE TABLE commands (
    command_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    action TEXT NOT NULL,
    value TEXT,                        -- JSON
    source TEXT NOT NULL CHECK (source IN ('automation', 'manual', 'boot', 'cloud')),
    reason TEXT,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'acked', 'failed', 'timed_out', 'superseded')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    acked_at REAL,
    error TEXT
);
CREATE INDEX commands_device_created ON commands (device_id, created_at);
CREATE INDEX commands_pending ON commands (state) WHERE state = 'pending';

-- Alerts, de-duplicated by `key` while active (edge/store/alerts.py).
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    room_id TEXT,
    device_id TEXT,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'resolved')),
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    resolved_at REAL,
    count INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX alerts_active_key ON alerts (key) WHERE state = 'active';
CREATE INDEX alerts_last ON alerts (last_at);

-- Automation state that must survive a restart ("for" timers, actuator states…; edge/store/state.py).
CREATE TABLE automation_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,               -- JSON
    updated_at REAL NOT NULL
);
