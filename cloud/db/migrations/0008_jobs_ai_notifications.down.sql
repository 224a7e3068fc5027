DROP TRIGGER recommendations_announce ON recommendations;
DROP TRIGGER notifications_announce ON notifications;
DROP TRIGGER edge_alerts_event ON edge_alerts;
DROP FUNCTION recommendations_announce(), notifications_announce(), edge_alerts_event();
DROP TABLE notification_deliveries, notification_preferences;
DROP INDEX notifications_unread_idx;
ALTER TABLE notifications DROP COLUMN episode_id, DROP COLUMN severity;
DROP TABLE alert_episodes, alert_events;
DROP TABLE yield_predictions, harvests, room_substrate;
DROP INDEX recommendations_open_key;
UPDATE recommendations SET status = 'dismissed' WHERE status = 'resolved';
ALTER TABLE recommendations
    DROP CONSTRAINT recommendations_status_check,
    ADD CONSTRAINT recommendations_status_check
        CHECK (status IN ('open', 'accepted', 'dismissed')),
    DROP COLUMN applied, DROP COLUMN decided_at, DROP COLUMN decided_by, DROP COLUMN updated_at,
    DROP COLUMN run_id, DROP COLUMN key;
DROP TABLE ai_runs;
DROP TABLE sensor_daily;
DROP TABLE room_hourly;
