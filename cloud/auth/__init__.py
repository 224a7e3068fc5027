"""Authentication and authorisation: passwords, JWT access tokens, refresh tokens, roles, limits."""
