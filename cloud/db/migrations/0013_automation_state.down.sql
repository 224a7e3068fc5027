DROP TRIGGER devices_config_update ON devices;
CREATE TRIGGER devices_config_update AFTER UPDATE ON devices
    FOR EACH ROW
    WHEN ((NEW.room_id, NEW.kind, NEW.actuator, NEW.credentials_hash)
          IS DISTINCT FROM (OLD.room_id, OLD.kind, OLD.actuator, OLD.credentials_hash))
    EXECUTE FUNCTION devices_config_changed();
ALTER TABLE devices DROP COLUMN safety;

DELETE FROM commands WHERE action = 'auto';
ALTER TABLE commands DROP COLUMN hold_minutes,
    DROP CONSTRAINT commands_action_check,
    ADD CONSTRAINT commands_action_check CHECK (action IN ('on', 'off', 'set'));

DROP TRIGGER room_automation_live ON room_automation;
DROP FUNCTION live_room_automation();
DROP TABLE room_automation;
