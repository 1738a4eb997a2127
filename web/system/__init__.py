"""Operators' and admins' view of the system: run-time config, stats, the audit trail."""
