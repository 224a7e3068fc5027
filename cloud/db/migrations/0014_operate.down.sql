DROP TRIGGER room_logbook_stage_by ON audit_log;
DROP FUNCTION room_logbook_stage_by();
DROP TRIGGER room_logbook_stage ON rooms;
DROP FUNCTION room_logbook_stage();
DROP TABLE room_logbook;
DROP INDEX edge_commands_room_idx;
DROP INDEX edge_commands_cloud_idx;

DROP TRIGGER alert_episodes_live ON alert_episodes;
CREATE TRIGGER alert_episodes_live AFTER INSERT OR UPDATE OF state, severity, message
    ON alert_episodes FOR EACH ROW EXECUTE FUNCTION live_alert_changed();
DROP TRIGGER alert_events_severity ON alert_events;
DROP FUNCTION alert_events_severity();
DROP FUNCTION alarm_severity(text, text);
DROP INDEX alert_episodes_history_idx;
ALTER TABLE alert_episodes
    DROP COLUMN acknowledged_at,
    DROP COLUMN acknowledged_by,
    DROP COLUMN ack_note,
    DROP COLUMN cleared_by,
    DROP COLUMN clear_note;
