DROP TRIGGER commands_announce ON commands;
DROP TRIGGER devices_config_update ON devices;
DROP TRIGGER devices_config_insert_delete ON devices;
DROP TRIGGER rules_config_delete ON automation_rules;
DROP TRIGGER rules_config_write ON automation_rules;
DROP TRIGGER rooms_config_delete ON rooms;
DROP TRIGGER rooms_config_write ON rooms;
DROP FUNCTION commands_announce(), devices_config_changed(), rules_config_changed(),
    rooms_config_changed(), edge_config_bump(text);
DROP TABLE device_status, edge_alerts, edge_quarantine, edge_commands, farm_config;
DROP INDEX commands_edge_command_idx;
ALTER TABLE commands DROP COLUMN edge_id, DROP COLUMN edge_command_id, DROP COLUMN delivered_at;
DROP INDEX edges_token_hash_key;
ALTER TABLE edges DROP COLUMN config_version, DROP COLUMN clock_offset_s;
ALTER TABLE automation_rules DROP COLUMN config_version, DROP COLUMN config_origin;
ALTER TABLE rooms DROP COLUMN config_version, DROP COLUMN config_origin,
    DROP COLUMN disabled_rules;
