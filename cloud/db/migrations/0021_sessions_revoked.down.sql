DROP TRIGGER users_live_signed_out ON users;
DROP FUNCTION live_user_signed_out();
ALTER TABLE users DROP COLUMN sessions_revoked_at;
