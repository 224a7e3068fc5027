ALTER TABLE pending_devices DROP COLUMN claim_mode;
