"""smartfarm edge package."""
