-- "Sign out everywhere" ends sessions at once, not when their access tokens expire: an access
-- token issued at or before users.sessions_revoked_at is refused, and the user's open dashboard
-- sockets are closed (the live hub hears 'signed_out').
ALTER TABLE users ADD COLUMN sessions_revoked_at timestamptz;

CREATE FUNCTION live_user_signed_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smartfarm_live',
                      json_build_object('k', 'signed_out', 'user', NEW.id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER users_live_signed_out AFTER UPDATE OF sessions_revoked_at ON users
    FOR EACH ROW WHEN (NEW.sessions_revoked_at IS DISTINCT FROM OLD.sessions_revoked_at)
    EXECUTE FUNCTION live_user_signed_out();
