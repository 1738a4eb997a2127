"""Stored run-time config: the values an admin set, by key (config/runtime.py types them)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import SystemConfig


def stored_values(*, session: Session) -> dict[str, Any]:
    return {row.key: row.value for row in session.scalars(select(SystemConfig))}


def store_values(*, session: Session, values: dict[str, Any], user_id: uuid.UUID | None) -> None:
    """Upsert each key (the audit trigger records who changed what)."""
    for key, value in values.items():
        statement = insert(SystemConfig).values(key=key, value=value, updated_by=user_id)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["key"],
                set_={
                    "value": statement.excluded.value,
                    "updated_by": user_id,
                    "updated_at": utcnow(),
                },
            )
        )


def delete_values(*, session: Session, keys: list[str]) -> list[str]:
    """Remove the stored value of each key, so the environment's default applies again (the
    audit trigger records each deletion). Returns the keys that had a stored value."""
    if not keys:
        return []
    removed = session.scalars(
        delete(SystemConfig).where(SystemConfig.key.in_(keys)).returning(SystemConfig.key)
    )
    return sorted(removed)
