-- The firmware each device reports in its status messages (edge sync `status` records carry it
-- from edge schema migration 5 on): the version shown on the room page and the device list.
ALTER TABLE device_status ADD COLUMN firmware text;
