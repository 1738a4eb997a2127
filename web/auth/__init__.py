"""Registration, login and token refresh."""
