ALTER TABLE device_status DROP COLUMN firmware;
