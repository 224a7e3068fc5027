DROP TABLE notifications, recommendations, automation_rules, commands;
