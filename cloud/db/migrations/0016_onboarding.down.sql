DROP TABLE pending_devices;
