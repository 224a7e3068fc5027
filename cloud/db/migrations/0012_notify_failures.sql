-- How each user's email and webhook channels are doing (cloud/notify/dispatch.py): deliveries
-- that failed in a row after their last retry, the last error and when, the last success.
-- Shown with the notification preferences, so a user sees that their webhook is broken
-- instead of a job failing out of sight. Reset by a success or a new target.
CREATE TABLE notification_channel_health (
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('email', 'webhook')),
    failures        integer NOT NULL DEFAULT 0,
    last_error      text,
    last_error_at   timestamptz,
    last_success_at timestamptz,
    PRIMARY KEY (user_id, channel)
);
