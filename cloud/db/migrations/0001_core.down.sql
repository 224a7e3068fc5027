DROP TABLE audit_log, refresh_tokens, edges, devices, member_room_grants, rooms, farm_members,
    farms, users;
