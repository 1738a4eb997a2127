"""The real-time relay: WebSockets fed by one Redis subscription per web process."""
