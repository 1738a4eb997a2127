"""Celery tasks. Each has an explicit name, takes ids and primitives, and re-reads state."""
