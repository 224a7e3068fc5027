-- Users, farms, membership with room grants, rooms, devices, edges, refresh tokens, audit log.
-- Farm, room and device ids are the ids of the MQTT topic scheme (shared.topics.ID_RE), unique
-- across the whole cloud so that /api/rooms/{room_id} needs no farm in the path.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    display_name  text NOT NULL DEFAULT '',
    password_hash text,                        -- NULL: invited, no password set yet
    invite_hash   text UNIQUE,                 -- sha256 of a one-time invitation token
    invite_expires_at timestamptz,
    is_admin      boolean NOT NULL DEFAULT false,
    is_active     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE farms (
    id         text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    name       text NOT NULL,
    timezone   text NOT NULL DEFAULT 'UTC',
    created_by bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE farm_members (
    farm_id    text NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('owner', 'operator', 'viewer')),
    -- false: only the rooms listed in member_room_grants (an owner always sees every room)
    all_rooms  boolean NOT NULL DEFAULT true CHECK (all_rooms OR role <> 'owner'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (farm_id, user_id)
);
CREATE INDEX farm_members_user_idx ON farm_members (user_id);

CREATE TABLE rooms (
    id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    farm_id       text NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    name          text NOT NULL DEFAULT '',
    species       text NOT NULL CHECK (species IN ('oyster', 'shiitake', 'lions_mane')),
    stage         text NOT NULL CHECK (stage IN ('spawn_run', 'pinning', 'fruiting')),
    stage_started timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rooms_farm_idx ON rooms (farm_id, id);

CREATE TABLE member_room_grants (
    farm_id text NOT NULL,
    user_id bigint NOT NULL,
    room_id text NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    PRIMARY KEY (farm_id, user_id, room_id),
    FOREIGN KEY (farm_id, user_id) REFERENCES farm_members (farm_id, user_id) ON DELETE CASCADE
);

CREATE TABLE devices (
    id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    room_id          text NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    name             text NOT NULL DEFAULT '',
    kind             text NOT NULL CHECK (kind IN ('sensor', 'actuator')),
    actuator         text CHECK (actuator IN ('humidifier', 'exhaust_fan', 'heater', 'light')),
    capabilities     jsonb NOT NULL DEFAULT '[]',
    -- argon2id of the MQTT password: the same format as the edge broker's password file
    credentials_hash text NOT NULL,
    last_seen        timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'actuator') = (actuator IS NOT NULL))
);
CREATE INDEX devices_room_idx ON devices (room_id, id);

CREATE TABLE edges (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    farm_id     text NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    name        text NOT NULL DEFAULT '',
    token_hash  text NOT NULL,                 -- sha256 of a 256-bit random token
    high_water  bigint NOT NULL DEFAULT 0,     -- last outbox seq stored (sync, exactly once)
    last_seen   timestamptz,
    rotated_at  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX edges_farm_idx ON edges (farm_id, id);

CREATE TABLE refresh_tokens (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash text NOT NULL UNIQUE,           -- sha256; the token itself is never stored
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

CREATE TABLE audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    user_id  bigint,                           -- no FK: the trail outlives the user
    farm_id  text,
    action   text NOT NULL,
    target   text NOT NULL DEFAULT '',
    detail   jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_farm_idx ON audit_log (farm_id, id);
