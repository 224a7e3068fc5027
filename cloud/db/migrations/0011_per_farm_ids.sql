-- Room, device, rule, command and edge ids are per farm (issue 11). Keys become (farm_id, id) and
-- every reference carries the farm, so two farms can both have a room "oyster-a" (edges name
-- rooms and devices in their MQTT topics, farm/{farm_id}/room/{room_id}/…) and creating an id
-- another tenant uses is no longer refused (a 409 naming the key told a tenant another's ids).
-- Farm ids stay global: they are the tenant's name in topics and in the AWS IoT policy.
--
-- Existing rows keep their ids; the farm of each is taken from its room (ids are still unique
-- cloud-wide when this runs). Readings of rooms deleted before now belong to no farm and are
-- dropped: kept, they would surface in whichever farm next created a room of that id.

-- ---- foreign keys on the old single-column keys ------------------------------------------------
ALTER TABLE member_room_grants DROP CONSTRAINT member_room_grants_room_id_fkey;
ALTER TABLE devices DROP CONSTRAINT devices_room_id_fkey;
ALTER TABLE commands DROP CONSTRAINT commands_room_id_fkey,
    DROP CONSTRAINT commands_device_id_fkey;
ALTER TABLE automation_rules DROP CONSTRAINT automation_rules_room_id_fkey;
ALTER TABLE recommendations DROP CONSTRAINT recommendations_room_id_fkey;
ALTER TABLE device_status DROP CONSTRAINT device_status_device_id_fkey;
ALTER TABLE room_hourly DROP CONSTRAINT room_hourly_room_id_fkey;
ALTER TABLE ai_runs DROP CONSTRAINT ai_runs_room_id_fkey;
ALTER TABLE room_substrate DROP CONSTRAINT room_substrate_room_id_fkey;
ALTER TABLE harvests DROP CONSTRAINT harvests_room_id_fkey;
ALTER TABLE yield_predictions DROP CONSTRAINT yield_predictions_room_id_fkey;

-- ---- the farm of every row that names a room or device -----------------------------------------
ALTER TABLE devices ADD COLUMN farm_id text;
ALTER TABLE commands ADD COLUMN farm_id text;
ALTER TABLE automation_rules ADD COLUMN farm_id text;
ALTER TABLE recommendations ADD COLUMN farm_id text;
ALTER TABLE device_status ADD COLUMN farm_id text;
ALTER TABLE room_hourly ADD COLUMN farm_id text;
ALTER TABLE ai_runs ADD COLUMN farm_id text;
ALTER TABLE room_substrate ADD COLUMN farm_id text;
ALTER TABLE harvests ADD COLUMN farm_id text;
ALTER TABLE yield_predictions ADD COLUMN farm_id text;
ALTER TABLE sensor_data ADD COLUMN farm_id text;
ALTER TABLE sensor_latest ADD COLUMN farm_id text;
ALTER TABLE sensor_hourly ADD COLUMN farm_id text;
ALTER TABLE sensor_daily ADD COLUMN farm_id text;

UPDATE devices t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE commands t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE automation_rules t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE recommendations t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE device_status t SET farm_id = d.farm_id FROM devices d WHERE d.id = t.device_id;
UPDATE room_hourly t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE ai_runs t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE room_substrate t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE harvests t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE yield_predictions t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE sensor_data t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE sensor_latest t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE sensor_hourly t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
UPDATE sensor_daily t SET farm_id = r.farm_id FROM rooms r WHERE r.id = t.room_id;
DELETE FROM sensor_data WHERE farm_id IS NULL;
DELETE FROM sensor_latest WHERE farm_id IS NULL;
DELETE FROM sensor_hourly WHERE farm_id IS NULL;
DELETE FROM sensor_daily WHERE farm_id IS NULL;

ALTER TABLE devices ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE commands ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE automation_rules ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE recommendations ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE device_status ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE room_hourly ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE ai_runs ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE room_substrate ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE harvests ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE yield_predictions ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE sensor_data ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE sensor_latest ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE sensor_hourly ALTER COLUMN farm_id SET NOT NULL;
ALTER TABLE sensor_daily ALTER COLUMN farm_id SET NOT NULL;

-- ---- keys ---------------------------------------------------------------------------------------
ALTER TABLE rooms DROP CONSTRAINT rooms_pkey, ADD PRIMARY KEY (farm_id, id);
DROP INDEX rooms_farm_idx;  -- the primary key now
ALTER TABLE devices DROP CONSTRAINT devices_pkey, ADD PRIMARY KEY (farm_id, id),
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE;
DROP INDEX devices_room_idx;
CREATE INDEX devices_room_idx ON devices (farm_id, room_id, id);
ALTER TABLE member_room_grants
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE;
ALTER TABLE commands DROP CONSTRAINT commands_pkey, ADD PRIMARY KEY (farm_id, id),
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE,
    ADD FOREIGN KEY (farm_id, device_id) REFERENCES devices (farm_id, id) ON DELETE CASCADE;
DROP INDEX commands_room_idx;
CREATE INDEX commands_room_idx ON commands (farm_id, room_id, created_at DESC, id DESC);
ALTER TABLE automation_rules DROP CONSTRAINT automation_rules_pkey,
    ADD PRIMARY KEY (farm_id, room_id, id),
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE;
ALTER TABLE recommendations
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE;
DROP INDEX recommendations_room_idx;
CREATE INDEX recommendations_room_idx ON recommendations (farm_id, room_id, id DESC);
DROP INDEX recommendations_open_key;
CREATE UNIQUE INDEX recommendations_open_key ON recommendations (farm_id, room_id, source, key)
    WHERE status = 'open';
ALTER TABLE device_status DROP CONSTRAINT device_status_pkey, ADD PRIMARY KEY (farm_id, device_id),
    ADD FOREIGN KEY (farm_id, device_id) REFERENCES devices (farm_id, id) ON DELETE CASCADE;
ALTER TABLE room_hourly DROP CONSTRAINT room_hourly_pkey, ADD PRIMARY KEY (farm_id, room_id, hour),
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE;
ALTER TABLE ai_runs
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE;
DROP INDEX ai_runs_room_idx;
CREATE INDEX ai_runs_room_idx ON ai_runs (farm_id, room_id, id DESC);
ALTER TABLE room_substrate DROP CONSTRAINT room_substrate_pkey, ADD PRIMARY KEY (farm_id, room_id),
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE;
ALTER TABLE harvests
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE;
DROP INDEX harvests_room_idx;
CREATE INDEX harvests_room_idx ON harvests (farm_id, room_id, id DESC);
ALTER TABLE yield_predictions DROP CONSTRAINT yield_predictions_room_id_flush_day_key,
    ADD UNIQUE (farm_id, room_id, flush, day),
    ADD FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE;

DROP INDEX sensor_data_room_metric_time_idx;
CREATE INDEX sensor_data_room_metric_time_idx
    ON sensor_data (farm_id, room_id, metric, time) INCLUDE (device_id, value);
ALTER TABLE sensor_latest DROP CONSTRAINT sensor_latest_pkey,
    ADD PRIMARY KEY (farm_id, device_id, metric);
ALTER TABLE sensor_hourly DROP CONSTRAINT sensor_hourly_pkey,
    ADD PRIMARY KEY (farm_id, room_id, metric, hour, device_id);
ALTER TABLE sensor_daily DROP CONSTRAINT sensor_daily_pkey,
    ADD PRIMARY KEY (farm_id, room_id, metric, day, device_id);

-- Edges: per farm too (tokens stay unique cloud-wide: an edge authenticates by token alone).
ALTER TABLE edges DROP CONSTRAINT edges_pkey, ADD PRIMARY KEY (farm_id, id);
DROP INDEX edges_farm_idx;
ALTER TABLE edge_commands DROP CONSTRAINT edge_commands_pkey,
    ADD PRIMARY KEY (farm_id, edge_id, command_id);
ALTER TABLE edge_quarantine DROP CONSTRAINT edge_quarantine_pkey,
    ADD PRIMARY KEY (farm_id, edge_id, seq);
DROP INDEX edge_alerts_active_key;
CREATE UNIQUE INDEX edge_alerts_active_key ON edge_alerts (farm_id, edge_id, key)
    WHERE state = 'active';
DROP INDEX commands_edge_command_idx;
CREATE INDEX commands_edge_command_idx ON commands (farm_id, edge_id, edge_command_id)
    WHERE edge_command_id IS NOT NULL;

-- ---- readings go with their farm -----------------------------------------------------------------
-- No foreign key (a check per row on the COPY path); a farm's deletion removes them instead, so
-- a later farm of the same id starts empty.
CREATE FUNCTION farm_readings_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sensor_data WHERE farm_id = OLD.id;
    DELETE FROM sensor_latest WHERE farm_id = OLD.id;
    DELETE FROM sensor_hourly WHERE farm_id = OLD.id;
    DELETE FROM sensor_daily WHERE farm_id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER farms_readings_delete AFTER DELETE ON farms
    FOR EACH ROW EXECUTE FUNCTION farm_readings_delete();

-- ---- triggers that found a row's farm through its room id ----------------------------------------
CREATE OR REPLACE FUNCTION sensor_hourly_fold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Sorted, so concurrent batches lock the rollup rows they share in the same order.
    INSERT INTO sensor_hourly AS h (farm_id, room_id, metric, hour, device_id, count, sum, min, max)
    SELECT farm_id, room_id, metric,
           date_bin('1 hour', time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), device_id,
           count(*), sum(value), min(value), max(value)
    FROM new_rows
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (farm_id, room_id, metric, hour, device_id) DO UPDATE
    SET count = h.count + excluded.count,
        sum = h.sum + excluded.sum,
        min = least(h.min, excluded.min),
        max = greatest(h.max, excluded.max);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION rules_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM edge_config_bump(OLD.farm_id);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.body IS NOT DISTINCT FROM OLD.body
            AND NEW.room_id = OLD.room_id THEN
        RETURN NEW;
    END IF;
    v := edge_config_bump(NEW.farm_id);
    NEW.config_version := coalesce(v, NEW.config_version);
    NEW.config_origin := nullif(current_setting('smartfarm.config_origin', true), '');
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION devices_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A device never moves between farms; one bump covers a move between its farm's rooms.
    IF TG_OP = 'INSERT' THEN
        PERFORM edge_config_bump(NEW.farm_id);
    ELSE
        PERFORM edge_config_bump(OLD.farm_id);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION commands_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'pending' THEN
        PERFORM pg_notify('smartfarm_edge',
                          json_build_object('farm_id', NEW.farm_id, 'command', NEW.id)::text);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION live_command_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object(
        'k', 'command', 'farm', NEW.farm_id, 'room', NEW.room_id, 'id', NEW.id,
        'status', NEW.status)::text);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION live_device_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object(
        'k', 'status', 'farm', NEW.farm_id, 'room', d.room_id, 'id', NEW.device_id)::text)
    FROM devices d WHERE d.farm_id = NEW.farm_id AND d.id = NEW.device_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION recommendations_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_room', json_build_object(
        'farm_id', NEW.farm_id, 'room_id', NEW.room_id, 'recommendation', NEW.id)::text);
    RETURN NULL;
END $$;
