"""The audit trail: writing the events the application knows about (the row-change trigger
writes the rest) and reading entries back, filtered.

`audit_log_entries` is range-partitioned by month on `occurred_at`. Queries go to the parent
table, so they see every monthly partition and the default one; a `since`/`until` bound lets
PostgreSQL prune the months outside it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from config.logging import mask_value
from db.models import AuditLogEntry

# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where an action came from: copied onto every audit entry it causes."""

    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


def record_event(
    *,
    session: Session,
    action: str,
    origin: Origin,
    user_id: uuid.UUID | None = None,
    resource_type: str | None = None,
    resource_id: object = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add one audit entry to the session's transaction; secrets in `details` are masked."""
    session.add(
        AuditLogEntry(
            user_id=user_id,
            action=action,
            resource_type=resource_type,
            resource_id=str(resource_id) if resource_id is not None else None,
            ip_address=origin.ip_address,
            user_agent=(origin.user_agent or "")[:512] or None,
            request_id=origin.request_id,
            details=mask_value("details", details or {}),
        )
    )


# --- reading ------------------------------------------------------------------------------

# Newest first; the id breaks ties between entries of one transaction (same occurred_at).
NEWEST_FIRST: tuple[Any, ...] = (AuditLogEntry.occurred_at.desc(), AuditLogEntry.id.desc())


@dataclass(frozen=True)
class AuditFilters:
    user_id: uuid.UUID | None = None
    action: str | None = None  # exact, or a prefix when it ends with "*" ("system_config.*")
    resource_type: str | None = None
    resource_id: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


def entries_query(filters: AuditFilters) -> Select[Any]:
    """The matching entries, unordered (callers page with NEWEST_FIRST)."""
    conditions: list[ColumnElement[bool]] = []
    if filters.user_id is not None:
        conditions.append(AuditLogEntry.user_id == filters.user_id)
    if filters.action:
        if filters.action.endswith("*"):
            conditions.append(AuditLogEntry.action.like(_like_prefix(filters.action[:-1])))
        else:
            conditions.append(AuditLogEntry.action == filters.action)
    if filters.resource_type is not None:
        conditions.append(AuditLogEntry.resource_type == filters.resource_type)
    if filters.resource_id is not None:
        conditions.append(AuditLogEntry.resource_id == filters.resource_id)
    if filters.since is not None:
        conditions.append(AuditLogEntry.occurred_at >= filters.since)
    if filters.until is not None:
        conditions.append(AuditLogEntry.occurred_at < filters.until)
    return select(AuditLogEntry).where(*conditions)
