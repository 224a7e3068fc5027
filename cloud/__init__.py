"""smartfarm cloud package."""
