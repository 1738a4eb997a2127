"""Audit events from the request: who, from where, with which request id."""

from __future__ import annotations

import uuid
from typing import Any

from flask import g, request

from db.audit_trail import Origin, record_event
from web.database import get_session


def request_origin() -> Origin:
    return Origin(
        ip_address=request.remote_addr,
        user_agent=request.user_agent.string or None,
        request_id=g.get("request_id"),
    )


def audit(
    action: str,
    *,
    user_id: uuid.UUID | None = None,
    resource_type: str | None = None,
    resource_id: object = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record inside the request's unit of work: it commits or rolls back with the change."""
    record_event(
        session=get_session(),
        action=action,
        origin=request_origin(),
        user_id=user_id,
        resource_type=resource_type,
        resource_id=resource_id,
        details=details,
    )
