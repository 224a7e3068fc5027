"""Notifications: alert events folded into episodes, stored in-app, delivered by email (SMTP) and
signed webhooks per user preferences, quiet hours and an hourly cap."""
