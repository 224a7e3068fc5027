-- Onboarding: whether a waiting device knocked with a claim key (docs/onboarding.md), so the
-- set-up page can say that, once adopted, the edge hands it its password (no re-flash).
ALTER TABLE pending_devices ADD COLUMN claim_mode boolean NOT NULL DEFAULT false;
