-- Operating a farm (issue 13): alarms that people acknowledge and clear, a severity that follows
-- the alarm's kind, and a grow logbook per room whose stage entries are written by a trigger, so
-- every stage change is recorded whoever made it (the cloud API, an edge's local page reconciled
-- by the sync, seed-db).

-- ---- alarms: acknowledge and clear ---------------------------------------------------------------
-- An episode is "active" until acknowledged (still active, someone is on it), and "cleared" when
-- it is resolved: by its condition ending (cleared_by NULL) or by an operator (cleared_by set).
ALTER TABLE alert_episodes
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by bigint,        -- no FK: the history outlives the user
    ADD COLUMN ack_note        text NOT NULL DEFAULT '',
    ADD COLUMN cleared_by      bigint,
    ADD COLUMN clear_note      text NOT NULL DEFAULT '';
CREATE INDEX alert_episodes_history_idx ON alert_episodes (farm_id, started_at DESC);

-- The severity of an alarm follows its kind: the reported one counts when it is higher (an edge
-- may know better), never lower (a runaway heater is critical whatever its reporter says).
CREATE FUNCTION alarm_severity(p_kind text, p_reported text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    WITH rank(name, n) AS (VALUES ('info', 0), ('warning', 1), ('critical', 2)),
    floor AS (
        SELECT CASE
            WHEN p_kind IN ('actuator_runaway', 'actuator_not_acking', 'edge_offline',
                            'sync_auth', 'sync_refused', 'sync_gap', 'sync_backlog')
                THEN 'critical'
            WHEN p_kind IN ('out_of_band', 'sensor_silent', 'command_failed', 'sync_config',
                            'rule_orphaned')
                THEN 'warning'
            ELSE 'info' END AS name
    ),
    reported AS (
        SELECT CASE lower(coalesce(p_reported, ''))
            WHEN 'error' THEN 'critical' WHEN 'fatal' THEN 'critical'
            WHEN 'warn' THEN 'warning' WHEN 'notice' THEN 'info'
            WHEN 'critical' THEN 'critical' WHEN 'warning' THEN 'warning' WHEN 'info' THEN 'info'
            ELSE 'warning' END AS name
    )
    SELECT CASE WHEN (SELECT n FROM rank WHERE name = (SELECT name FROM reported))
                     >= (SELECT n FROM rank WHERE name = (SELECT name FROM floor))
                THEN (SELECT name FROM reported) ELSE (SELECT name FROM floor) END
$$;

CREATE FUNCTION alert_events_severity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'active' THEN
        NEW.severity := alarm_severity(NEW.kind, NEW.severity);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER alert_events_severity BEFORE INSERT ON alert_events
    FOR EACH ROW EXECUTE FUNCTION alert_events_severity();

-- Pages follow acknowledgements and clears live too.
DROP TRIGGER alert_episodes_live ON alert_episodes;
CREATE TRIGGER alert_episodes_live
    AFTER INSERT OR UPDATE OF state, severity, message, acknowledged_at, cleared_by
    ON alert_episodes FOR EACH ROW EXECUTE FUNCTION live_alert_changed();

-- ---- the command audit -------------------------------------------------------------------------
-- The edge's record of a cloud command (its ack time), and a room's commands made on the edge.
CREATE INDEX edge_commands_cloud_idx ON edge_commands (farm_id, cloud_command_id)
    WHERE cloud_command_id IS NOT NULL;
CREATE INDEX edge_commands_room_idx ON edge_commands (farm_id, room_id, created_at DESC);

-- ---- the grow logbook ----------------------------------------------------------------------------
-- Notes, batches (a new batch or flush started) and stage changes. Harvests stay in `harvests`
-- and are read beside these (never stored twice).
CREATE TABLE room_logbook (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    farm_id    text NOT NULL,
    room_id    text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('batch', 'stage', 'note')),
    at         timestamptz NOT NULL DEFAULT now(),
    title      text NOT NULL DEFAULT '',
    text       text NOT NULL DEFAULT '',
    stage      text,                          -- stage entries: the new stage
    details    jsonb NOT NULL DEFAULT '{}',   -- batch: strain, substrate, spawn_date, …
    created_by bigint,                        -- no FK: the logbook outlives the user
    origin     text,                          -- NULL: the cloud; else the edge that made it
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE
);
CREATE INDEX room_logbook_room_idx ON room_logbook (farm_id, room_id, at, id);

-- Every stage a room enters: at creation and at each change, by whichever writer.
CREATE FUNCTION room_logbook_stage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.stage IS NOT DISTINCT FROM OLD.stage THEN
        RETURN NULL;
    END IF;
    INSERT INTO room_logbook (farm_id, room_id, kind, at, title, text, stage, origin)
    VALUES (NEW.farm_id, NEW.id, 'stage', coalesce(NEW.stage_started, now()),
            'stage', CASE WHEN TG_OP = 'UPDATE' THEN OLD.stage ELSE '' END, NEW.stage,
            nullif(current_setting('smartfarm.config_origin', true), ''));
    RETURN NULL;
END $$;
CREATE TRIGGER room_logbook_stage AFTER INSERT OR UPDATE OF stage ON rooms
    FOR EACH ROW EXECUTE FUNCTION room_logbook_stage();

-- The API writes its audit row just after the change: it names the user of the stage entry.
CREATE FUNCTION room_logbook_stage_by() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_id IS NULL OR (NEW.action = 'room.update' AND NOT (NEW.detail ? 'stage')) THEN
        RETURN NULL;
    END IF;
    UPDATE room_logbook SET created_by = NEW.user_id
    WHERE id = (SELECT id FROM room_logbook
                WHERE farm_id = NEW.farm_id AND room_id = NEW.target AND kind = 'stage'
                  AND (NOT (NEW.detail ? 'stage') OR stage = NEW.detail ->> 'stage')
                  AND created_by IS NULL AND origin IS NULL
                  AND created_at >= now() - interval '1 minute'
                ORDER BY id DESC LIMIT 1);
    RETURN NULL;
END $$;
CREATE TRIGGER room_logbook_stage_by AFTER INSERT ON audit_log
    FOR EACH ROW WHEN (NEW.action IN ('room.update', 'room.create'))
    EXECUTE FUNCTION room_logbook_stage_by();

-- Rooms that exist already start their logbook with the stage they are in.
INSERT INTO room_logbook (farm_id, room_id, kind, at, title, text, stage)
SELECT farm_id, id, 'stage', stage_started, 'stage', '', stage FROM rooms;
