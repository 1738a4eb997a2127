"""Writing audit events that the application (not the row trigger) knows about."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from config.logging import mask_value
from db.models import AuditLogEntry


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
