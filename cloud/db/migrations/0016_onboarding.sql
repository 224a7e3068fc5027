-- Onboarding: devices that knocked at an edge's broker with the farm's claim code (an unknown id,
-- refused until adopted), as the edge reports them (`pending_device` sync records). An owner
-- adopts one into a room (it becomes a registered device, whose config push reaches the edge) or
-- dismisses it here. One row per farm and device id, the edge's latest report winning.
CREATE TABLE pending_devices (
    farm_id      text NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    device_id    text NOT NULL CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    edge_id      text NOT NULL,
    state        text NOT NULL CHECK (state IN ('pending', 'adopted', 'dismissed')),
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    attempts     integer NOT NULL CHECK (attempts >= 0),
    address      text NOT NULL CHECK (length(address) <= 64),
    client_id    text NOT NULL CHECK (length(client_id) <= 64),
    room_id      text,
    reported_at  timestamptz NOT NULL,          -- the edge's time of its latest report
    -- Dismissed in the cloud (the edge still lists it until someone dismisses it there too).
    dismissed_at timestamptz,
    dismissed_by bigint REFERENCES users (id) ON DELETE SET NULL,
    PRIMARY KEY (farm_id, device_id)
);
CREATE INDEX pending_devices_waiting_idx ON pending_devices (farm_id, last_seen DESC)
    WHERE state = 'pending' AND dismissed_at IS NULL;
