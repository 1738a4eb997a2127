"""Front doors in other services' protocols, over the same persisted, queued, tracked jobs."""
