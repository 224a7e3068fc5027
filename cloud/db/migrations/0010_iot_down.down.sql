ALTER TABLE commands DROP COLUMN iot_published_at;
DROP INDEX edges_iot_idx;
ALTER TABLE edges DROP COLUMN iot_since, DROP COLUMN iot_config_version, DROP COLUMN iot_config_at;
