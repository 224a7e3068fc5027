-- Background jobs' tables: derived metrics per room and hour, daily rollups, AI runs and
-- recommendation lifecycle, substrate, harvests and yield predictions, alert episodes and
-- notifications with per-user preferences and deliveries.

-- process_sensor_data: one row per room and UTC hour. Time in band is the share of the hour's
-- minutes whose mean was inside the room's profile band (NULL: the metric was not reported).
CREATE TABLE room_hourly (
    room_id        text NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    hour           timestamptz NOT NULL,
    species        text NOT NULL,
    stage          text NOT NULL,
    samples        integer NOT NULL,          -- raw banded readings seen (detects late uploads)
    minutes        integer NOT NULL,          -- minutes with at least one banded reading
    temperature_c  double precision,
    humidity_pct   double precision,
    co2_ppm        double precision,
    vpd_kpa        double precision,
    dew_point_c    double precision,
    in_band_temperature double precision,
    in_band_humidity    double precision,
    in_band_co2         double precision,
    in_band_all         double precision,      -- minutes with every reported metric in band
    computed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, hour)
);

-- cleanup_old_data folds sensor_hourly (migration 0006) into days, so raw readings can expire
-- while history stays cheap to read. Same shape as sensor_hourly; days are UTC days.
CREATE TABLE sensor_daily (
    room_id   text NOT NULL,
    metric    text NOT NULL,
    day       timestamptz NOT NULL,
    device_id text NOT NULL,
    count     bigint NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    PRIMARY KEY (room_id, metric, day, device_id)
);

-- One row per recommendation run (scheduled or requested), with the provider's token usage.
CREATE TABLE ai_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id       text NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    provider      text NOT NULL,
    model         text,
    trigger       text NOT NULL CHECK (trigger IN ('schedule', 'request')),
    requested_by  bigint REFERENCES users (id) ON DELETE SET NULL,
    status        text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'succeeded', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    input_tokens  integer,
    output_tokens integer,
    recommendations integer NOT NULL DEFAULT 0,
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX ai_runs_room_idx ON ai_runs (room_id, id DESC);

-- A recommendation keeps its key while open: a later run refreshes it instead of repeating it,
-- and closes (resolved) the open ones it no longer makes.
ALTER TABLE recommendations
    ADD COLUMN key text,
    ADD COLUMN run_id bigint REFERENCES ai_runs (id) ON DELETE SET NULL,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN decided_by bigint REFERENCES users (id) ON DELETE SET NULL,
    ADD COLUMN decided_at timestamptz,
    ADD COLUMN applied jsonb,                  -- what accepting did: {"command_id"} / {"rule_id"}
    DROP CONSTRAINT recommendations_status_check,
    ADD CONSTRAINT recommendations_status_check
        CHECK (status IN ('open', 'accepted', 'dismissed', 'resolved'));
CREATE UNIQUE INDEX recommendations_open_key ON recommendations (room_id, source, key)
    WHERE status = 'open';

-- Yield: the substrate loaded in a room, harvests per flush, and daily predictions.
CREATE TABLE room_substrate (
    room_id      text PRIMARY KEY REFERENCES rooms (id) ON DELETE CASCADE,
    dry_mass_kg  double precision NOT NULL CHECK (dry_mass_kg > 0),
    wet_mass_kg  double precision CHECK (wet_mass_kg > 0),
    moisture_pct double precision CHECK (moisture_pct >= 0 AND moisture_pct < 100),
    loaded_at    timestamptz NOT NULL DEFAULT now(),
    updated_by   bigint REFERENCES users (id) ON DELETE SET NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE harvests (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id      text NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    flush        integer NOT NULL CHECK (flush BETWEEN 1 AND 20),
    weight_kg    double precision NOT NULL CHECK (weight_kg > 0),
    harvested_at timestamptz NOT NULL DEFAULT now(),
    note         text NOT NULL DEFAULT '',
    recorded_by  bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX harvests_room_idx ON harvests (room_id, id DESC);

CREATE TABLE yield_predictions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id      text NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    flush        integer NOT NULL,
    day          date NOT NULL,
    expected_kg  double precision NOT NULL,
    low_kg       double precision NOT NULL,
    high_kg      double precision NOT NULL,
    time_in_band double precision,
    factor       double precision NOT NULL,
    inputs       jsonb NOT NULL,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (room_id, flush, day)
);

-- Alerts: every state change (an edge's, through the trigger below, or a cloud check's) is an
-- event; process_alerts folds events into episodes, and notifies once per episode, a reminder
-- later while it lasts, and once when it is resolved.
CREATE TABLE alert_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    farm_id    text NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    source     text NOT NULL,              -- the edge id, or 'cloud'
    key        text NOT NULL,
    kind       text NOT NULL,
    severity   text NOT NULL,
    message    text NOT NULL,
    room_id    text,
    device_id  text,
    state      text NOT NULL CHECK (state IN ('active', 'resolved')),
    at         timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);
CREATE INDEX alert_events_pending_idx ON alert_events (id) WHERE processed_at IS NULL;

CREATE TABLE alert_episodes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    farm_id     text NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    source      text NOT NULL,
    key         text NOT NULL,
    kind        text NOT NULL,
    severity    text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message     text NOT NULL,
    room_id     text,
    device_id   text,
    state       text NOT NULL CHECK (state IN ('active', 'resolved')),
    started_at  timestamptz NOT NULL,
    last_at     timestamptz NOT NULL,
    resolved_at timestamptz,
    reminders   integer NOT NULL DEFAULT 0,
    notified    boolean NOT NULL DEFAULT false,   -- its start was notified
    -- When the next notice is due: a reminder while active; "resolved" once it stayed resolved
    -- for the reopen window (an alert back within it continues the episode silently).
    next_notice_at timestamptz
);
CREATE UNIQUE INDEX alert_episodes_active_key ON alert_episodes (farm_id, source, key)
    WHERE state = 'active';
CREATE INDEX alert_episodes_notice_idx ON alert_episodes (next_notice_at)
    WHERE next_notice_at IS NOT NULL;
CREATE INDEX alert_episodes_farm_idx ON alert_episodes (farm_id, id DESC);

ALTER TABLE notifications
    ADD COLUMN severity text NOT NULL DEFAULT 'info',
    ADD COLUMN episode_id bigint REFERENCES alert_episodes (id) ON DELETE SET NULL;
CREATE INDEX notifications_unread_idx ON notifications (user_id) WHERE read_at IS NULL;

CREATE TABLE notification_preferences (
    user_id        bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    email_enabled  boolean NOT NULL DEFAULT false,
    email          text,                   -- NULL: the account's address
    webhook_url    text,
    webhook_secret text,                   -- HMAC key; never returned by the API
    min_severity   text NOT NULL DEFAULT 'warning'
                   CHECK (min_severity IN ('info', 'warning', 'critical')),
    quiet_start    time,
    quiet_end      time,
    timezone       text NOT NULL DEFAULT 'UTC',
    max_per_hour   integer NOT NULL DEFAULT 10 CHECK (max_per_hour BETWEEN 1 AND 1000),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL))
);

-- One row per notification and outside channel; send_notification jobs carry its id.
CREATE TABLE notification_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id bigint NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('email', 'webhook')),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed', 'suppressed', 'skipped')),
    reason          text,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    not_before      timestamptz,           -- held back by quiet hours until then
    job_id          bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX notification_deliveries_user_idx ON notification_deliveries (user_id, created_at);
CREATE INDEX notification_deliveries_pending_idx ON notification_deliveries (created_at)
    WHERE status = 'pending';

-- An edge alert (stored by the sync) that starts or ends becomes an event, and process_alerts
-- is queued at once (one pending job at most: a second defer hits procrastinate's queueing lock
-- and is dropped) so a notification does not wait for the next minute's sweep. The savepoint
-- keeps a queueing-lock conflict from failing the edge's upload.
CREATE FUNCTION edge_alerts_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.state IS NOT DISTINCT FROM OLD.state THEN
        RETURN NULL;
    END IF;
    INSERT INTO alert_events (farm_id, source, key, kind, severity, message, room_id, device_id,
                              state, at)
    VALUES (NEW.farm_id, NEW.edge_id, NEW.key, NEW.kind, NEW.severity, NEW.message, NEW.room_id,
            NEW.device_id, NEW.state,
            CASE WHEN NEW.state = 'resolved' THEN coalesce(NEW.resolved_at, NEW.last_at)
                 ELSE NEW.first_at END);
    BEGIN
        PERFORM procrastinate_defer_jobs_v1(ARRAY[ROW(
            'default', 'process_alerts', 0, NULL, 'process_alerts', '{}'::jsonb, NULL
        )::procrastinate_job_to_defer_v1]);
    EXCEPTION WHEN unique_violation THEN
        NULL;  -- one is already waiting; it will see this event
    END;
    RETURN NULL;
END $$;
CREATE TRIGGER edge_alerts_event AFTER INSERT OR UPDATE OF state ON edge_alerts
    FOR EACH ROW EXECUTE FUNCTION edge_alerts_event();

-- Live updates for the dashboard: ids only (listeners fetch the rows).
CREATE FUNCTION notifications_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_user',
                      json_build_object('user_id', NEW.user_id, 'notification', NEW.id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER notifications_announce AFTER INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_announce();

CREATE FUNCTION recommendations_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_room',
                      json_build_object('room_id', NEW.room_id, 'recommendation', NEW.id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER recommendations_announce AFTER INSERT OR UPDATE OF status ON recommendations
    FOR EACH ROW EXECUTE FUNCTION recommendations_announce();
