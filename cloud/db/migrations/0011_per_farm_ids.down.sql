-- Back to ids unique cloud-wide. Fails (unique violation) once two farms share an id: those
-- rows must be renamed or removed first.

CREATE OR REPLACE FUNCTION recommendations_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_room',
                      json_build_object('room_id', NEW.room_id, 'recommendation', NEW.id)::text);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION live_device_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object(
        'k', 'status', 'farm', r.farm_id, 'room', d.room_id, 'id', NEW.device_id)::text)
    FROM devices d JOIN rooms r ON r.id = d.room_id WHERE d.id = NEW.device_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION live_command_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object(
        'k', 'command', 'farm', r.farm_id, 'room', NEW.room_id, 'id', NEW.id,
        'status', NEW.status)::text)
    FROM rooms r WHERE r.id = NEW.room_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION commands_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'pending' THEN
        PERFORM pg_notify('smartfarm_edge',
                          json_build_object('farm_id', r.farm_id, 'command', NEW.id)::text)
        FROM rooms r WHERE r.id = NEW.room_id;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION devices_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM edge_config_bump(r.farm_id) FROM rooms r WHERE r.id = OLD.room_id;
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.room_id <> OLD.room_id) THEN
        PERFORM edge_config_bump(r.farm_id) FROM rooms r WHERE r.id = NEW.room_id;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION rules_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM edge_config_bump(r.farm_id) FROM rooms r WHERE r.id = OLD.room_id;
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.body IS NOT DISTINCT FROM OLD.body
            AND NEW.room_id = OLD.room_id THEN
        RETURN NEW;
    END IF;
    SELECT edge_config_bump(r.farm_id) INTO v FROM rooms r WHERE r.id = NEW.room_id;
    NEW.config_version := coalesce(v, NEW.config_version);
    NEW.config_origin := nullif(current_setting('smartfarm.config_origin', true), '');
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION sensor_hourly_fold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Sorted, so concurrent batches lock the rollup rows they share in the same order.
    INSERT INTO sensor_hourly AS h (room_id, metric, hour, device_id, count, sum, min, max)
    SELECT room_id, metric, date_bin('1 hour', time, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
           device_id, count(*), sum(value), min(value), max(value)
    FROM new_rows
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (room_id, metric, hour, device_id) DO UPDATE
    SET count = h.count + excluded.count,
        sum = h.sum + excluded.sum,
        min = least(h.min, excluded.min),
        max = greatest(h.max, excluded.max);
    RETURN NULL;
END
$$;

DROP TRIGGER farms_readings_delete ON farms;
DROP FUNCTION farm_readings_delete();

DROP INDEX commands_edge_command_idx;
CREATE INDEX commands_edge_command_idx ON commands (edge_id, edge_command_id)
    WHERE edge_command_id IS NOT NULL;
DROP INDEX edge_alerts_active_key;
CREATE UNIQUE INDEX edge_alerts_active_key ON edge_alerts (edge_id, key) WHERE state = 'active';
ALTER TABLE edge_quarantine DROP CONSTRAINT edge_quarantine_pkey, ADD PRIMARY KEY (edge_id, seq);
ALTER TABLE edge_commands DROP CONSTRAINT edge_commands_pkey,
    ADD PRIMARY KEY (edge_id, command_id);
ALTER TABLE edges DROP CONSTRAINT edges_pkey, ADD PRIMARY KEY (id);
CREATE INDEX edges_farm_idx ON edges (farm_id, id);

-- Dropping the composite keys drops the foreign keys that use them (CASCADE).
ALTER TABLE sensor_daily DROP CONSTRAINT sensor_daily_pkey,
    ADD PRIMARY KEY (room_id, metric, day, device_id);
ALTER TABLE sensor_hourly DROP CONSTRAINT sensor_hourly_pkey,
    ADD PRIMARY KEY (room_id, metric, hour, device_id);
ALTER TABLE sensor_latest DROP CONSTRAINT sensor_latest_pkey, ADD PRIMARY KEY (device_id, metric);
DROP INDEX sensor_data_room_metric_time_idx;
CREATE INDEX sensor_data_room_metric_time_idx
    ON sensor_data (room_id, metric, time) INCLUDE (device_id, value);

ALTER TABLE yield_predictions DROP CONSTRAINT yield_predictions_farm_id_room_id_flush_day_key,
    ADD UNIQUE (room_id, flush, day);
DROP INDEX harvests_room_idx;
CREATE INDEX harvests_room_idx ON harvests (room_id, id DESC);
ALTER TABLE room_substrate DROP CONSTRAINT room_substrate_pkey, ADD PRIMARY KEY (room_id);
DROP INDEX ai_runs_room_idx;
CREATE INDEX ai_runs_room_idx ON ai_runs (room_id, id DESC);
ALTER TABLE room_hourly DROP CONSTRAINT room_hourly_pkey, ADD PRIMARY KEY (room_id, hour);
ALTER TABLE device_status DROP CONSTRAINT device_status_pkey, ADD PRIMARY KEY (device_id);
DROP INDEX recommendations_open_key;
CREATE UNIQUE INDEX recommendations_open_key ON recommendations (room_id, source, key)
    WHERE status = 'open';
DROP INDEX recommendations_room_idx;
CREATE INDEX recommendations_room_idx ON recommendations (room_id, id DESC);
ALTER TABLE automation_rules DROP CONSTRAINT automation_rules_pkey, ADD PRIMARY KEY (room_id, id);
DROP INDEX commands_room_idx;
CREATE INDEX commands_room_idx ON commands (room_id, created_at DESC, id DESC);
ALTER TABLE commands DROP CONSTRAINT commands_pkey, ADD PRIMARY KEY (id);
DROP INDEX devices_room_idx;
CREATE INDEX devices_room_idx ON devices (room_id, id);
ALTER TABLE devices DROP CONSTRAINT devices_pkey CASCADE, ADD PRIMARY KEY (id);
ALTER TABLE rooms DROP CONSTRAINT rooms_pkey CASCADE, ADD PRIMARY KEY (id);
CREATE INDEX rooms_farm_idx ON rooms (farm_id, id);

ALTER TABLE devices DROP COLUMN farm_id;
ALTER TABLE commands DROP COLUMN farm_id;
ALTER TABLE automation_rules DROP COLUMN farm_id;
ALTER TABLE recommendations DROP COLUMN farm_id;
ALTER TABLE device_status DROP COLUMN farm_id;
ALTER TABLE room_hourly DROP COLUMN farm_id;
ALTER TABLE ai_runs DROP COLUMN farm_id;
ALTER TABLE room_substrate DROP COLUMN farm_id;
ALTER TABLE harvests DROP COLUMN farm_id;
ALTER TABLE yield_predictions DROP COLUMN farm_id;
ALTER TABLE sensor_data DROP COLUMN farm_id;
ALTER TABLE sensor_latest DROP COLUMN farm_id;
ALTER TABLE sensor_hourly DROP COLUMN farm_id;
ALTER TABLE sensor_daily DROP COLUMN farm_id;

ALTER TABLE member_room_grants
    ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE;
ALTER TABLE devices ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE;
ALTER TABLE commands ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE,
    ADD FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE;
ALTER TABLE automation_rules ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE;
ALTER TABLE recommendations ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE;
ALTER TABLE device_status ADD FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE;
ALTER TABLE room_hourly ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE;
ALTER TABLE ai_runs ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE;
ALTER TABLE room_substrate ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE;
ALTER TABLE harvests ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE;
ALTER TABLE yield_predictions ADD FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE CASCADE;
