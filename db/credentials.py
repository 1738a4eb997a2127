"""Login sessions (rotating refresh tokens) and API keys. Functions flush, never commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import ApiKey, User, UserSession

# --- sessions ---------------------------------------------------------------------------
# A login starts a family. Each refresh revokes the presented row ("rotated") and adds a
# new row to the same family, so presenting a rotated token again is detectable as reuse.


def start_session(
    *,
    session: Session,
    user_id: uuid.UUID,
    refresh_jti: str,
    ttl: timedelta,
    ip_address: str | None,
    user_agent: str | None,
    family_id: uuid.UUID | None = None,
) -> UserSession:
    row = UserSession(
        user_id=user_id,
        refresh_jti=refresh_jti,
        family_id=family_id or uuid.uuid4(),
        expires_at=utcnow() + ttl,
        ip_address=ip_address,
        user_agent=(user_agent or "")[:512] or None,
    )
    session.add(row)
    session.flush()
    return row


def lock_families(*, session: Session, family_ids: Sequence[uuid.UUID]) -> None:
    """Serialise refresh and revocation within each family until this transaction ends.

    Without it, a refresh that inserts the family's next row while a revocation runs leaves
    that row live: the revoking UPDATE's snapshot predates it. Transaction-scoped advisory
    locks work behind PgBouncer in transaction mode; sorted order avoids deadlocks.
    """
    for family_id in sorted(set(family_ids)):
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:family, 0))"),
            {"family": str(family_id)},
        )


def find_session_for_refresh(
    *, session: Session, refresh_jti: str, family_id: uuid.UUID
) -> UserSession | None:
    """The row of a presented refresh token, with its family locked (see lock_families)."""
    lock_families(session=session, family_ids=[family_id])
    return session.scalar(
        select(UserSession).where(
            UserSession.refresh_jti == refresh_jti, UserSession.family_id == family_id
        )
    )


def revoke_families(
    *, session: Session, family_ids: Sequence[uuid.UUID], reason: str
) -> list[uuid.UUID]:
    """Revoke every live row of these families; returns the families that had live rows.

    Callers blocklist every family they asked for, whatever this returns.
    """
    if not family_ids:
        return []
    lock_families(session=session, family_ids=family_ids)
    revoked = session.scalars(
        update(UserSession)
        .where(UserSession.family_id.in_(family_ids), UserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
        .returning(UserSession.family_id)
    ).all()
    return sorted(set(revoked))


def live_families(
    *, session: Session, user_id: uuid.UUID, except_family: uuid.UUID | None = None
) -> list[uuid.UUID]:
    query = select(UserSession.family_id).where(
        UserSession.user_id == user_id,
        UserSession.revoked_at.is_(None),
        UserSession.expires_at > utcnow(),
    )
    if except_family is not None:
        query = query.where(UserSession.family_id != except_family)
    return sorted(set(session.scalars(query)))


def list_live_sessions(*, session: Session, user_id: uuid.UUID) -> list[UserSession]:
    return list(
        session.scalars(
            select(UserSession)
            .where(
                UserSession.user_id == user_id,
                UserSession.revoked_at.is_(None),
                UserSession.expires_at > utcnow(),
            )
            .order_by(UserSession.created_at.desc())
        )
    )


# --- API keys ---------------------------------------------------------------------------


def add_api_key(
    *,
    session: Session,
    user_id: uuid.UUID,
    name: str,
    prefix: str,
    key_hash: str,
    scopes: list[str],
    expires_at: datetime | None,
    limits: dict[str, int] | None = None,
    webhook_url: str | None = None,
) -> ApiKey:
    key = ApiKey(
        user_id=user_id,
        name=name,
        prefix=prefix,
        key_hash=key_hash,
        scopes=scopes,
        expires_at=expires_at,
        limits=limits or {},
        webhook_url=webhook_url,
    )
    session.add(key)
    session.flush()
    return key


def find_api_key(*, session: Session, prefix: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))


def list_api_keys(*, session: Session, user_id: uuid.UUID) -> list[ApiKey]:
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc())
        )
    )


def revoke_user_api_keys(*, session: Session, user_id: uuid.UUID) -> int:
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def api_key_usable(*, session: Session, key_id: uuid.UUID) -> bool:
    """Whether the key still opens the API: not revoked, not expired, its owner active."""
    now = func.now()
    return bool(
        session.scalar(
            select(ApiKey.id)
            .join(User, User.id == ApiKey.user_id)
            .where(
                ApiKey.id == key_id,
                ApiKey.revoked_at.is_(None),
                (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now),
                User.is_active.is_(True),
                User.deleted_at.is_(None),
            )
        )
    )
