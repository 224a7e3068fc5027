-- Commands to actuators, automation rules, AI recommendations and user notifications.

CREATE TABLE commands (
    id         text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    room_id    text NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    device_id  text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    action     text NOT NULL CHECK (action IN ('on', 'off', 'set')),
    value      jsonb,
    status     text NOT NULL DEFAULT 'pending'
               CHECK (status IN ('pending', 'delivered', 'acked', 'failed', 'timed_out', 'expired')),
    error      text,
    created_by bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commands_room_idx ON commands (room_id, created_at DESC, id DESC);
CREATE INDEX commands_pending_idx ON commands (created_at) WHERE status = 'pending';

CREATE TABLE automation_rules (
    room_id    text NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    id         text NOT NULL,
    body       jsonb NOT NULL,                 -- a shared.rules.Rule, validated before it lands
    version    integer NOT NULL DEFAULT 1,
    updated_by bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, id)
);

CREATE TABLE recommendations (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id    text NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    source     text NOT NULL,                  -- 'builtin' advisor, 'bedrock', …
    severity   text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    title      text NOT NULL,
    reason     text NOT NULL,
    action     jsonb,                          -- a suggested rule or command, applicable as is
    status     text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'accepted', 'dismissed')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recommendations_room_idx ON recommendations (room_id, id DESC);

CREATE TABLE notifications (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    farm_id    text REFERENCES farms (id) ON DELETE CASCADE,
    room_id    text,
    kind       text NOT NULL,
    title      text NOT NULL,
    body       text NOT NULL DEFAULT '',
    read_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_user_idx ON notifications (user_id, id DESC);
