-- Live dashboard updates (cloud.live): small NOTIFY payloads on channel smartfarm_live, delivered
-- on commit by whichever instance, job or edge upload made the change; every cloud instance LISTENs
-- and fetches what it pushes to browsers by id. Readings are announced by the batch writer (one
-- payload per room and batch with each device's newest values), not by a trigger: a statement
-- trigger on sensor_data would also fire for bulk loads (seed-db, benchmarks) nobody watches live.

-- A command created or moved to another state (pending → delivered → acked/failed/…).
CREATE FUNCTION live_command_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object(
        'k', 'command', 'farm', r.farm_id, 'room', NEW.room_id, 'id', NEW.id,
        'status', NEW.status)::text)
    FROM rooms r WHERE r.id = NEW.room_id;
    RETURN NULL;
END $$;
CREATE TRIGGER commands_live_insert AFTER INSERT ON commands
    FOR EACH ROW EXECUTE FUNCTION live_command_changed();
CREATE TRIGGER commands_live_update AFTER UPDATE OF status ON commands
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION live_command_changed();

-- A device's reported status (online, relay state), as stored by the edge sync.
CREATE FUNCTION live_device_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object(
        'k', 'status', 'farm', r.farm_id, 'room', d.room_id, 'id', NEW.device_id)::text)
    FROM devices d JOIN rooms r ON r.id = d.room_id WHERE d.id = NEW.device_id;
    RETURN NULL;
END $$;
CREATE TRIGGER device_status_live AFTER INSERT OR UPDATE ON device_status
    FOR EACH ROW EXECUTE FUNCTION live_device_status();

-- An alert episode that starts, changes severity or ends.
CREATE FUNCTION live_alert_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object(
        'k', 'alert', 'farm', NEW.farm_id, 'room', NEW.room_id, 'id', NEW.id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER alert_episodes_live AFTER INSERT OR UPDATE OF state, severity, message
    ON alert_episodes FOR EACH ROW EXECUTE FUNCTION live_alert_changed();

-- A room renamed or moved to another stage (in the cloud, or on its edge and reconciled): pages
-- reload the room (its bands follow the stage).
CREATE FUNCTION live_room_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object(
        'k', 'room', 'farm', NEW.farm_id, 'room', NEW.id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER rooms_live AFTER UPDATE OF name, species, stage, stage_started ON rooms
    FOR EACH ROW WHEN ((NEW.name, NEW.species, NEW.stage, NEW.stage_started)
                       IS DISTINCT FROM (OLD.name, OLD.species, OLD.stage, OLD.stage_started))
    EXECUTE FUNCTION live_room_changed();

-- Membership narrowed or removed: the hub re-checks that member's subscriptions to the farm.
CREATE FUNCTION live_access_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('smartfarm_live', json_build_object(
            'k', 'access', 'farm', OLD.farm_id, 'user', OLD.user_id)::text);
    ELSE
        PERFORM pg_notify('smartfarm_live', json_build_object(
            'k', 'access', 'farm', NEW.farm_id, 'user', NEW.user_id)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER farm_members_live AFTER UPDATE OR DELETE ON farm_members
    FOR EACH ROW EXECUTE FUNCTION live_access_changed();
CREATE TRIGGER member_room_grants_live AFTER INSERT OR DELETE ON member_room_grants
    FOR EACH ROW EXECUTE FUNCTION live_access_changed();

-- An account disabled: its open sockets are closed.
CREATE FUNCTION live_user_disabled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live', json_build_object('k', 'user', 'user', NEW.id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER users_live_disabled AFTER UPDATE OF is_active ON users
    FOR EACH ROW WHEN (OLD.is_active AND NOT NEW.is_active)
    EXECUTE FUNCTION live_user_disabled();
