DROP TRIGGER users_live_disabled ON users;
DROP TRIGGER member_room_grants_live ON member_room_grants;
DROP TRIGGER farm_members_live ON farm_members;
DROP TRIGGER rooms_live ON rooms;
DROP TRIGGER alert_episodes_live ON alert_episodes;
DROP TRIGGER device_status_live ON device_status;
DROP TRIGGER commands_live_update ON commands;
DROP TRIGGER commands_live_insert ON commands;
DROP FUNCTION live_user_disabled(), live_access_changed(), live_room_changed(), live_alert_changed(),
    live_device_status(), live_command_changed();
