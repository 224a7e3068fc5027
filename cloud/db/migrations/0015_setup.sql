-- Set-up from the web: where a farm's devices find their MQTT broker (the edge on the farm's
-- network), shown with a new device's credentials and in its QR code. The cloud cannot know the
-- edge's address on the farm's LAN, so the owner says it once per farm.
CREATE TABLE farm_device_network (
    farm_id    text PRIMARY KEY REFERENCES farms (id) ON DELETE CASCADE,
    mqtt_host  text NOT NULL CHECK (length(mqtt_host) BETWEEN 1 AND 253),
    mqtt_port  integer NOT NULL DEFAULT 1884 CHECK (mqtt_port BETWEEN 1 AND 65535),
    tls        boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
