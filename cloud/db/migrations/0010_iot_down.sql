-- Commands and config published to AWS IoT edges' commands topics (cloud/sync/iot_down.py).
--
-- The cloud learns that an edge is on AWS IoT from its batches: the topic rule adds the header
-- X-Smartfarm-Reply-Topic, which only a batch published on the edge's own batches topic (with
-- its certificate) carries. `iot_since` is set by the first such batch and cleared by a batch
-- posted over HTTPS directly (the edge then runs its HTTPS uplink and no longer listens there).
ALTER TABLE edges
    ADD COLUMN iot_since timestamptz,
    -- the config version last published on the edge's commands topic, and when
    ADD COLUMN iot_config_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN iot_config_at timestamptz;
CREATE INDEX edges_iot_idx ON edges (farm_id) WHERE iot_since IS NOT NULL;

-- When a pending command was last published to its farm's AWS IoT edges: the claim that makes
-- one cloud instance publish it (every instance hears the NOTIFY), and the clock for publishing
-- it again while it stays pending (AWS IoT drops a QoS 1 message for an edge that is offline).
ALTER TABLE commands ADD COLUMN iot_published_at timestamptz;
