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

-- migration 2: cloud sync: outbox, upload segments and cursor, cloud command links, triggers

-- Everything the edge records goes up to the cloud exactly once, numbered by a per-edge `seq` that
-- grows by one per record (shared/sync.py). Readings are their own outbox: a reading costs no
-- extra row (the bytes-per-reading budget), the uploader reads them by id. Every other kind is a
-- row here, appended by the triggers below in the same transaction as the row it mirrors (or by
-- edge/store/outbox.py for acks, which have no table). Kinds: 1 quarantine (ref = quarantine.id),
-- 2 command, 3 command_state, 4 ack, 5 alert, 6 status, 7 config_change (data = compact JSON).
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    at REAL NOT NULL,                  -- edge clock when the record was made
    ref INTEGER,                       -- row id in the kind's own table, read at upload time
    data TEXT                          -- JSON object, for kinds that have no table of their own
);

-- Seqs are given out when records are first sent, not when they are stored: records not yet sent
-- may still be merged by the backlog cap policy (edge/outbox.py) without leaving a hole in the
-- sequence. A segment is one batch as first sent: seqs first_seq.. cover the outbox rows with
-- outbox_from <= id <= outbox_to (id order), then the readings with readings_from <= id <=
-- readings_to. Rows inside a segment never change while the segment exists, so a resend (after a
-- restart, or a 409 rewind) carries the same records under the same seqs. The newest segment is
-- never pruned: its upper ids keep new row ids above every id already given a seq.
CREATE TABLE outbox_segments (
    first_seq INTEGER PRIMARY KEY,
    n_outbox INTEGER NOT NULL,
    n_readings INTEGER NOT NULL,
    outbox_from INTEGER NOT NULL,
    outbox_to INTEGER NOT NULL,
    readings_from INTEGER NOT NULL,
    readings_to INTEGER NOT NULL,
    made_at REAL NOT NULL
);

-- The sync cursor and applied cloud config, by key (JSON values):
--   acked_seq, acked_outbox, acked_reading   what the cloud has confirmed (its high-water mark)
--   next_seq, assigned_outbox, assigned_reading   where the next segment starts
--   config_version, config   the cloud config last applied (ConfigPush JSON)
--   clock_offset_s   cloud minus edge clock, from the last BatchAck
--   applying_config   present only inside the transaction that applies a cloud config
CREATE TABLE sync_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO sync_state (key, value, updated_at) VALUES
    ('acked_seq', '0', 0), ('acked_outbox', '0', 0), ('acked_reading', '0', 0),
    ('next_seq', '1', 0), ('assigned_outbox', '0', 0), ('assigned_reading', '0', 0),
    ('config_version', '0', 0);

-- Readings merged into 1-minute means by the backlog cap policy: the first reading of the minute
-- keeps its row with the mean values, `n` says how many readings it stands for.
CREATE TABLE reading_means (
    reading_id INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    period_s REAL NOT NULL
);

-- Commands received from the cloud, by the cloud's id: a redelivered command is answered again,
-- never executed twice; command / command_state records carry the cloud id through this link.
CREATE TABLE cloud_commands (
    cloud_command_id TEXT PRIMARY KEY,
    command_id TEXT,                   -- the edge command it became (NULL when not executed)
    state TEXT NOT NULL,               -- delivered | expired | rejected
    detail TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX cloud_commands_command ON cloud_commands (command_id);

CREATE TRIGGER outbox_quarantine AFTER INSERT ON quarantine
BEGIN
    INSERT INTO outbox (kind, at, ref) VALUES ({kind:quarantine}, new.received_at, new.id);
END;

CREATE TRIGGER outbox_command AFTER INSERT ON commands
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:command}, new.created_at, json_object(
        'command_id', new.command_id, 'device_id', new.device_id, 'room_id', new.room_id,
        'action', new.action, 'value', json(coalesce(new.value, 'null')), 'source', new.source,
        'reason', new.reason, 'created_at', new.created_at,
        'cloud_command_id',
        (SELECT cloud_command_id FROM cloud_commands WHERE command_id = new.command_id)));
END;

CREATE TRIGGER outbox_command_state AFTER UPDATE OF state ON commands
WHEN new.state IS NOT old.state
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:command_state}, new.updated_at, json_object(
        'command_id', new.command_id, 'state', new.state, 'at', new.updated_at,
        'error', new.error, 'attempts', new.attempts,
        'cloud_command_id',
        (SELECT cloud_command_id FROM cloud_commands WHERE command_id = new.command_id)));
END;

-- An alert is recorded when raised and when resolved; the bumps in between (count, last_at) not.
CREATE TRIGGER outbox_alert_raised AFTER INSERT ON alerts
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:alert}, new.first_at, json_object(
        'key', new.key, 'kind', new.kind, 'severity', new.severity, 'message', new.message,
        'room_id', new.room_id, 'device_id', new.device_id, 'state', new.state,
        'at', new.first_at));
END;

CREATE TRIGGER outbox_alert_resolved AFTER UPDATE OF state ON alerts
WHEN new.state = 'resolved' AND old.state IS NOT 'resolved'
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:alert}, coalesce(new.resolved_at, new.last_at),
        json_object(
        'key', new.key, 'kind', new.kind, 'severity', new.severity, 'message', new.message,
        'room_id', new.room_id, 'device_id', new.device_id, 'state', 'resolved',
        'at', coalesce(new.resolved_at, new.last_at)));
END;

-- Status messages only (status_at moves); telemetry's last_seen touches are not records.
CREATE TRIGGER outbox_status_new AFTER INSERT ON device_status
WHEN new.status_at IS NOT NULL
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:status}, new.status_at, json_object(
        'device_id', new.device_id, 'room_id', new.room_id,
        'online', json(CASE WHEN new.online THEN 'true' ELSE 'false' END),
        'state', json(new.state), 'at', new.status_at));
END;

CREATE TRIGGER outbox_status AFTER UPDATE OF status_at ON device_status
WHEN new.status_at IS NOT NULL
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:status}, new.status_at, json_object(
        'device_id', new.device_id, 'room_id', new.room_id,
        'online', json(CASE WHEN new.online THEN 'true' ELSE 'false' END),
        'state', json(new.state), 'at', new.status_at));
END;

-- Local config changes (the local page's stage change and rule enable/disable, persisted by the
-- automation in automation_state) go up with the cloud config version they were based on; the
-- cloud reconciles them. Applying a cloud config writes the same keys inside a transaction that
-- holds `applying_config`, so it is not echoed back as a local change.
CREATE TRIGGER outbox_stage_insert AFTER INSERT ON automation_state
WHEN substr(new.key, 1, 5) = 'room:'
    AND NOT EXISTS (SELECT 1 FROM sync_state WHERE key = 'applying_config')
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:config_change}, new.updated_at, json_object(
        'version', NULL,
        'base_version', (SELECT CAST(value AS INTEGER) FROM sync_state
                         WHERE key = 'config_version'),
        'change', json_object('room_id', substr(new.key, 6),
                              'stage', json_extract(new.value, '$.stage'),
                              'stage_started', json_extract(new.value, '$.stage_started')),
        'at', new.updated_at));
END;

CREATE TRIGGER outbox_stage_update AFTER UPDATE OF value ON automation_state
WHEN substr(new.key, 1, 5) = 'room:' AND new.value IS NOT old.value
    AND NOT EXISTS (SELECT 1 FROM sync_state WHERE key = 'applying_config')
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:config_change}, new.updated_at, json_object(
        'version', NULL,
        'base_version', (SELECT CAST(value AS INTEGER) FROM sync_state
                         WHERE key = 'config_version'),
        'change', json_object('room_id', substr(new.key, 6),
                              'stage', json_extract(new.value, '$.stage'),
                              'stage_started', json_extract(new.value, '$.stage_started')),
        'at', new.updated_at));
END;

CREATE TRIGGER outbox_rule_disabled AFTER INSERT ON automation_state
WHEN substr(new.key, 1, 14) = 'rule_disabled:'
    AND NOT EXISTS (SELECT 1 FROM sync_state WHERE key = 'applying_config')
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:config_change}, new.updated_at, json_object(
        'version', NULL,
        'base_version', (SELECT CAST(value AS INTEGER) FROM sync_state
                         WHERE key = 'config_version'),
        'change', json_object('rule_id', substr(new.key, 15), 'enabled', json('false')),
        'at', new.updated_at));
END;

CREATE TRIGGER outbox_rule_enabled AFTER DELETE ON automation_state
WHEN substr(old.key, 1, 14) = 'rule_disabled:'
    AND NOT EXISTS (SELECT 1 FROM sync_state WHERE key = 'applying_config')
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:config_change}, (julianday('now') - 2440587.5) * 86400.0,
        json_object(
        'version', NULL,
        'base_version', (SELECT CAST(value AS INTEGER) FROM sync_state
                         WHERE key = 'config_version'),
        'change', json_object('rule_id', substr(old.key, 15), 'enabled', json('true')),
        'at', (julianday('now') - 2440587.5) * 86400.0));
END;

-- migration 3: latest values come from the readings index; the per-reading upsert is gone
-- (it cost ~210 bytes written per reading), so its table goes too.
DROP TABLE latest;

-- migration 4: readings lose their (ts, series) index; coarse time blocks instead
-- Appending to an index b-tree rebalances three sibling pages at a time: the index rewrote ~5 pages
-- of every group commit (more than the readings themselves; ~130 of the ~410 bytes written per
-- reading at 1 s commits). QoS 1 redeliveries are now caught by the writer's memory of recent
-- (series, ts) keys (edge/store/readings.py), falling back to the blocks below for older ones.
-- A block is 1024 consecutive reading ids with bounds on their ts, rounded out to the minute so a
-- block row (and its index entry) changes about once a minute, not with every reading: time ranges
-- read the blocks that may hold them, then those id ranges of readings (rowid order, no index).
DROP INDEX readings_ts_series;
CREATE TABLE reading_blocks (
    block INTEGER PRIMARY KEY,         -- readings.id >> 10
    min_ts REAL NOT NULL,              -- <= every ts in the block (minute bounds; CAST, not
    max_ts REAL NOT NULL               -- >  every ts in the block   floor(): plain SQLite builds)
);
CREATE INDEX reading_blocks_max_ts ON reading_blocks (max_ts);
INSERT INTO reading_blocks (block, min_ts, max_ts)
    SELECT id >> 10, CAST(min(ts) / 60 AS INTEGER) * 60 - 60,
        CAST(max(ts) / 60 AS INTEGER) * 60 + 60
    FROM readings GROUP BY id >> 10;
CREATE TRIGGER reading_blocks_insert AFTER INSERT ON readings
BEGIN
    INSERT INTO reading_blocks (block, min_ts, max_ts)
        VALUES (new.id >> 10, CAST(new.ts / 60 AS INTEGER) * 60 - 60,
            CAST(new.ts / 60 AS INTEGER) * 60 + 60)
        ON CONFLICT (block) DO UPDATE SET min_ts = min(min_ts, excluded.min_ts),
            max_ts = max(max_ts, excluded.max_ts)
        WHERE excluded.min_ts < min_ts OR excluded.max_ts > max_ts;
END;

-- migration 5: devices waiting for adoption (edge.onboarding)
-- A device that logs in with an unknown id and the farm's claim code is refused (nothing it sends
-- is accepted) and remembered here until an operator adopts it into a room or dismisses it.
CREATE TABLE pending_devices (
    device_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'adopted', 'dismissed')),
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    attempts INTEGER NOT NULL,
    address TEXT NOT NULL,             -- the peer's IP address at its last attempt
    client_id TEXT NOT NULL,           -- the MQTT client id it sent (often carries the MAC)
    room_id TEXT,                      -- once adopted: where, and as what
    kind TEXT,
    actuator TEXT,
    updated_at REAL NOT NULL
);

-- migration 6: firmware updates offered to devices (edge/firmware.py); status records carry firmware
CREATE TABLE firmware_updates (
    device_id TEXT PRIMARY KEY,        -- one open offer per device; a new one replaces it
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,              -- the image (<data_dir>/firmware/<sha256>.bin)
    token_hash TEXT NOT NULL UNIQUE,   -- sha256 of the download URL's token (never the token)
    command_id TEXT NOT NULL,          -- the `ota` command that carried the offer
    offered_at REAL NOT NULL,
    offered_by TEXT NOT NULL,
    expires_at REAL NOT NULL,
    from_firmware TEXT,                -- what the device ran when offered
    downloaded_at REAL,
    installed_at REAL,                 -- a status message reported the version
    error TEXT                         -- the device's error ack after taking the offer
);
DROP TRIGGER outbox_status_new;
DROP TRIGGER outbox_status;
CREATE TRIGGER outbox_status_new AFTER INSERT ON device_status
WHEN new.status_at IS NOT NULL
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:status}, new.status_at, json_object(
        'device_id', new.device_id, 'room_id', new.room_id,
        'online', json(CASE WHEN new.online THEN 'true' ELSE 'false' END),
        'state', json(new.state), 'firmware', new.firmware, 'at', new.status_at));
END;
CREATE TRIGGER outbox_status AFTER UPDATE OF status_at ON device_status
WHEN new.status_at IS NOT NULL
BEGIN
    INSERT INTO outbox (kind, at, data) VALUES ({kind:status}, new.status_at, json_object(
        'device_id', new.device_id, 'room_id', new.room_id,
        'online', json(CASE WHEN new.online THEN 'true' ELSE 'false' END),
        'state', json(new.state), 'firmware', new.firmware, 'at', new.status_at));
END;

-- migration 7: claim sessions (edge/onboarding.py): the node's own claim key, kept as a hash
-- The first keyed claim login of an id fixes it; only that node may later fetch the credentials
-- an adoption issued (a claim-code holder knocking with the same id and another key may not).
ALTER TABLE pending_devices ADD COLUMN claim_key_hash TEXT;
