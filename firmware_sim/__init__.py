"""smartfarm firmware_sim package."""
