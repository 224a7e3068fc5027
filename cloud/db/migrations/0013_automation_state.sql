-- The grower's "why" (issue 13): each room's effective automation as its edge reports it (every
-- rule with its source, actuator states, manual and safety holds, devices' last-seen), manual
-- holds from the cloud with a duration and their end ("back to auto"), and device safety limits.

-- The newest report per room (outbox kind "automation"); older reports never overwrite it.
CREATE TABLE room_automation (
    farm_id     text NOT NULL,
    room_id     text NOT NULL,
    edge_id     text NOT NULL,
    seq         bigint NOT NULL,                -- the outbox record that carried it
    reported_at timestamptz NOT NULL,           -- the edge's time of the report, clock-corrected
    received_at timestamptz NOT NULL DEFAULT now(),
    state       jsonb NOT NULL,                 -- shared.sync.AutomationData
    PRIMARY KEY (farm_id, room_id),
    FOREIGN KEY (farm_id, room_id) REFERENCES rooms (farm_id, id) ON DELETE CASCADE
);

-- Pages showing the room reload its automation state.
CREATE FUNCTION live_room_automation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object(
        'k', 'automation', 'farm', NEW.farm_id, 'room', NEW.room_id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER room_automation_live AFTER INSERT OR UPDATE ON room_automation
    FOR EACH ROW EXECUTE FUNCTION live_room_automation();

-- A manual hold for a chosen time, and "back to auto" (action 'auto': the edge clears the hold).
ALTER TABLE commands DROP CONSTRAINT commands_action_check,
    ADD CONSTRAINT commands_action_check CHECK (action IN ('on', 'off', 'set', 'auto')),
    ADD COLUMN hold_minutes double precision
        CONSTRAINT commands_hold_minutes_check CHECK (hold_minutes > 0 AND hold_minutes <= 10080);

-- Safety limits of an actuator (shared.rules.Safety; NULL: the edge's own or its role's
-- default). They go to the edge with the config, so a change bumps the farm's config version.
ALTER TABLE devices ADD COLUMN safety jsonb;
DROP TRIGGER devices_config_update ON devices;
CREATE TRIGGER devices_config_update AFTER UPDATE ON devices
    FOR EACH ROW
    WHEN ((NEW.room_id, NEW.kind, NEW.actuator, NEW.credentials_hash, NEW.safety)
          IS DISTINCT FROM (OLD.room_id, OLD.kind, OLD.actuator, OLD.credentials_hash, OLD.safety))
    EXECUTE FUNCTION devices_config_changed();
