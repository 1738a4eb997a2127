"""Celery app and tasks, engine clients, event publishing, GPU discovery and heartbeats."""
