-- Edge ↔ cloud sync: a desired-config version per farm, change announcements over NOTIFY, and
-- the tables for what edges upload besides readings.
--
-- The config version is bumped by triggers, not by handlers: every writer (API, seed-db, the
-- reconciliation of edits made on an edge) then bumps it atomically with its edit, and the NOTIFY
-- is delivered only when that transaction commits. Notifications carry ids only (channel
-- `smartfarm_edge`, payload {"farm_id", "config": version} or {"farm_id", "command": id}); the
-- listener fetches what it needs, so payloads stay far below NOTIFY's 8000-byte limit.

CREATE TABLE farm_config (
    farm_id    text PRIMARY KEY REFERENCES farms (id) ON DELETE CASCADE,
    version    bigint NOT NULL CHECK (version >= 1),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The farm version at an item's last change, and who made it (NULL: the cloud; else the edge
-- whose uploaded edit it was, named by the transaction setting `smartfarm.config_origin`). An
-- edge's edit made on top of `base_version` loses to another writer's change of the same item
-- after it (config_version > base_version), not to its own earlier edits.
ALTER TABLE rooms
    ADD COLUMN config_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN config_origin text,
    -- ids of rules disabled on this room that are not cloud rules (the edge's profile rules)
    ADD COLUMN disabled_rules text[] NOT NULL DEFAULT '{}';
ALTER TABLE automation_rules
    ADD COLUMN config_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN config_origin text;

ALTER TABLE edges
    ADD COLUMN config_version bigint NOT NULL DEFAULT 0,   -- last version the edge applied
    ADD COLUMN clock_offset_s double precision;             -- cloud minus edge, last batch
-- Edge requests authenticate by token alone (the edge id is not needed to find the row).
CREATE UNIQUE INDEX edges_token_hash_key ON edges (token_hash);

-- Delivery of cloud commands: which edge took it and under which edge command id.
ALTER TABLE commands
    ADD COLUMN edge_id text,
    ADD COLUMN edge_command_id text,
    ADD COLUMN delivered_at timestamptz;
CREATE INDEX commands_edge_command_idx ON commands (edge_id, edge_command_id)
    WHERE edge_command_id IS NOT NULL;

-- What edges upload. edge_id has no foreign key: the history outlives a removed edge.
CREATE TABLE edge_commands (
    edge_id          text NOT NULL,
    command_id       text NOT NULL,
    farm_id          text NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    room_id          text,
    device_id        text,
    action           text,
    value            jsonb,
    source           text,                 -- automation | manual | boot | cloud
    reason           text,
    state            text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    error            text,
    ack_status       text,                 -- the device's answer: ok | error
    acked_at         timestamptz,
    cloud_command_id text,
    created_at       timestamptz,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (edge_id, command_id)
);
CREATE INDEX edge_commands_farm_idx ON edge_commands (farm_id, created_at DESC);

-- Messages an edge's ingest refused (origin 'edge'), and uploaded records the cloud could not use
-- (origin 'cloud': malformed, or naming a room/device this farm does not have). One per seq.
CREATE TABLE edge_quarantine (
    edge_id       text NOT NULL,
    seq           bigint NOT NULL,
    farm_id       text NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    origin        text NOT NULL CHECK (origin IN ('edge', 'cloud')),
    received_at   timestamptz NOT NULL,
    topic         text NOT NULL DEFAULT '',
    reason        text NOT NULL,
    payload       bytea NOT NULL DEFAULT '',
    original_size integer NOT NULL DEFAULT 0,
    stored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (edge_id, seq)
);
CREATE INDEX edge_quarantine_farm_idx ON edge_quarantine (farm_id, received_at DESC);

-- Alerts raised on an edge, de-duplicated by key while active (as on the edge).
CREATE TABLE edge_alerts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    edge_id     text NOT NULL,
    farm_id     text NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    key         text NOT NULL,
    kind        text NOT NULL,
    severity    text NOT NULL,
    message     text NOT NULL,
    room_id     text,
    device_id   text,
    state       text NOT NULL CHECK (state IN ('active', 'resolved')),
    first_at    timestamptz NOT NULL,
    last_at     timestamptz NOT NULL,
    resolved_at timestamptz,
    count       integer NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX edge_alerts_active_key ON edge_alerts (edge_id, key) WHERE state = 'active';
CREATE INDEX edge_alerts_farm_idx ON edge_alerts (farm_id, last_at DESC);

-- Last reported status of each device (from its edge).
CREATE TABLE device_status (
    device_id text PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    edge_id   text NOT NULL,
    online    boolean NOT NULL,
    state     jsonb NOT NULL DEFAULT '{}',
    at        timestamptz NOT NULL
);

-- Bump a farm's config version and announce it; NULL (nothing done) when the farm is gone, which
-- happens while a farm's deletion cascades to its rooms.
CREATE FUNCTION edge_config_bump(p_farm text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    INSERT INTO farm_config AS fc (farm_id, version)
    SELECT f.id, 1 FROM farms f WHERE f.id = p_farm
    ON CONFLICT (farm_id) DO UPDATE SET version = fc.version + 1, updated_at = now()
    RETURNING fc.version INTO v;
    IF v IS NOT NULL THEN
        PERFORM pg_notify('smartfarm_edge', json_build_object('farm_id', p_farm, 'config', v)::text);
    END IF;
    RETURN v;
END $$;

CREATE FUNCTION rooms_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM edge_config_bump(OLD.farm_id);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.farm_id, NEW.name, NEW.species, NEW.stage, NEW.stage_started,
                             NEW.disabled_rules)
            IS NOT DISTINCT FROM (OLD.farm_id, OLD.name, OLD.species, OLD.stage,
                                  OLD.stage_started, OLD.disabled_rules) THEN
        RETURN NEW;
    END IF;
    NEW.config_version := coalesce(edge_config_bump(NEW.farm_id), NEW.config_version);
    NEW.config_origin := nullif(current_setting('smartfarm.config_origin', true), '');
    RETURN NEW;
END $$;
CREATE TRIGGER rooms_config_write BEFORE INSERT OR UPDATE ON rooms
    FOR EACH ROW EXECUTE FUNCTION rooms_config_changed();
CREATE TRIGGER rooms_config_delete AFTER DELETE ON rooms
    FOR EACH ROW EXECUTE FUNCTION rooms_config_changed();

CREATE FUNCTION rules_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM edge_config_bump(r.farm_id) FROM rooms r WHERE r.id = OLD.room_id;
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.body IS NOT DISTINCT FROM OLD.body
            AND NEW.room_id = OLD.room_id THEN
        RETURN NEW;
    END IF;
    SELECT edge_config_bump(r.farm_id) INTO v FROM rooms r WHERE r.id = NEW.room_id;
    NEW.config_version := coalesce(v, NEW.config_version);
    NEW.config_origin := nullif(current_setting('smartfarm.config_origin', true), '');
    RETURN NEW;
END $$;
CREATE TRIGGER rules_config_write BEFORE INSERT OR UPDATE ON automation_rules
    FOR EACH ROW EXECUTE FUNCTION rules_config_changed();
CREATE TRIGGER rules_config_delete AFTER DELETE ON automation_rules
    FOR EACH ROW EXECUTE FUNCTION rules_config_changed();

-- Devices: only what the edge needs (placement, role, broker credentials); not name or last_seen.
CREATE FUNCTION devices_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM edge_config_bump(r.farm_id) FROM rooms r WHERE r.id = OLD.room_id;
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.room_id <> OLD.room_id) THEN
        PERFORM edge_config_bump(r.farm_id) FROM rooms r WHERE r.id = NEW.room_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_config_insert_delete AFTER INSERT OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION devices_config_changed();
CREATE TRIGGER devices_config_update AFTER UPDATE ON devices
    FOR EACH ROW
    WHEN ((NEW.room_id, NEW.kind, NEW.actuator, NEW.credentials_hash)
          IS DISTINCT FROM (OLD.room_id, OLD.kind, OLD.actuator, OLD.credentials_hash))
    EXECUTE FUNCTION devices_config_changed();

-- A new pending command is announced to the instances holding its farm's edge connections.
CREATE FUNCTION commands_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'pending' THEN
        PERFORM pg_notify('smartfarm_edge',
                          json_build_object('farm_id', r.farm_id, 'command', NEW.id)::text)
        FROM rooms r WHERE r.id = NEW.room_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER commands_announce AFTER INSERT ON commands
    FOR EACH ROW EXECUTE FUNCTION commands_announce();
