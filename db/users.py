"""Domain operations on accounts. They flush; the caller's unit of work commits."""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import (
    AuditLogEntry,
    InferenceRequest,
    Role,
    User,
    WebhookDelivery,
    WebhookSecret,
)


def normalise_email(email: str | None) -> str | None:
    """One form for storing and comparing emails: NFKC, lower case by Python's rules (the
    database's lower() differs for some letters, so stored values are compared exactly)."""
    return unicodedata.normalize("NFKC", email).lower() if email is not None else None


class UserExistsError(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(f"a user with this {field} already exists")
        self.field = field


def find_conflict(
    *, session: Session, username: str, email: str, exclude: uuid.UUID | None = None
) -> str | None:
    """Which of username / email is taken (case-insensitively), if any."""
    email = normalise_email(email) or ""
    query = select(func.lower(User.username), User.email).where(
        (func.lower(User.username) == username.lower())
        | (User.email == email)
        | (func.lower(User.email) == email)
    )
    if exclude is not None:
        query = query.where(User.id != exclude)
    taken = session.execute(query).first()
    if taken is None:
        return None
    return "username" if taken[0] == username.lower() else "email"


def create_user(
    *, session: Session, username: str, email: str, password_hash: str, role: Role = Role.USER
) -> User:
    conflict = find_conflict(session=session, username=username, email=email)
    if conflict:
        raise UserExistsError(conflict)
    user = User(username=username, email=email, password_hash=password_hash, role=role)
    session.add(user)
    session.flush()
    return user


def find_by_login(*, session: Session, login: str, for_update: bool = False) -> User | None:
    """The live account whose username or email is `login` (case-insensitive).

    `for_update` locks the row: concurrent logins to one account then take turns, so the
    lockout check and the failure count cannot be raced past.
    """
    query = select(User).where(
        User.deleted_at.is_(None),
        (func.lower(User.username) == login.lower()) | (User.email == normalise_email(login)),
    )
    return session.scalar(query.with_for_update() if for_update else query)


@dataclass(frozen=True)
class FailureCount:
    failures: int
    locked_until: datetime | None


def record_login_failure(
    *, session: Session, user_id: uuid.UUID, max_failures: int, window: timedelta
) -> FailureCount:
    """Count a failed password in the current window, atomically; lock on the last allowed one.
    Logins and current-password checks (API keys, profile, deletion) share this count.

    The window restarts when the first failure in it is older than `window`. One UPDATE, so
    concurrent guesses cannot slip past the counter.
    """
    now = utcnow()
    window_expired = (User.first_failed_login_at.is_(None)) | (
        User.first_failed_login_at < now - window
    )
    new_count = case((window_expired, 1), else_=User.failed_login_count + 1)
    row = session.execute(
        update(User)
        .where(User.id == user_id)
        .values(
            failed_login_count=new_count,
            first_failed_login_at=case((window_expired, now), else_=User.first_failed_login_at),
            locked_until=case((new_count >= max_failures, now + window), else_=User.locked_until),
        )
        .returning(User.failed_login_count, User.locked_until)
    ).one()
    return FailureCount(failures=row[0], locked_until=row[1])


def clear_login_failures(*, session: Session, user: User) -> None:
    """The right password was given (at a login or a current-password check): the count
    of failures starts again."""
    user.failed_login_count = 0
    user.first_failed_login_at = None
    user.locked_until = None


def record_login_success(*, session: Session, user: User) -> None:
    clear_login_failures(session=session, user=user)
    user.last_login_at = utcnow()


def count_active_admins(*, session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).where(
                User.role == Role.ADMIN, User.is_active, User.deleted_at.is_(None)
            )
        )
        or 0
    )


def lock_admins(*, session: Session) -> None:
    """Serialise changes that could remove the last admin (two demotions at once)."""
    session.execute(select(User.id).where(User.role == Role.ADMIN).with_for_update()).all()


def erase_personal_data(*, session: Session, user: User) -> None:
    """Anonymise the account and scrub prompts and outputs; keep counts for usage aggregates."""
    tag = user.id.hex[:12]
    user.username = f"deleted-{tag}"
    user.email = f"deleted-{tag}@invalid"
    user.password_hash = "!"  # noqa: S105  (matches no bcrypt hash: no login possible)
    user.is_active = False
    user.deleted_at = utcnow()
    user.failed_login_count = 0
    user.first_failed_login_at = None
    user.locked_until = None
    session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.user_id == user.id)
        .values(input={}, output=None, output_message=None, idempotency_key=None, webhook_url=None)
    )
    # Their webhooks too: the URLs may say who they were, and no one is left to sign for.
    mine = select(InferenceRequest.id).where(InferenceRequest.user_id == user.id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.request_id.in_(mine)))
    session.execute(delete(WebhookSecret).where(WebhookSecret.user_id == user.id))
    session.flush()  # the audit trigger records this update; scrub that entry too
    _scrub_audit_trail(session=session, user_id=user.id)


PERSONAL_FIELDS = frozenset({"username", "email"})
ERASED = "[erased]"


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ERASED if k in PERSONAL_FIELDS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


def _scrub_audit_trail(*, session: Session, user_id: uuid.UUID) -> None:
    """Replace the erased user's name and email wherever the trail recorded their row."""
    entries = session.scalars(
        select(AuditLogEntry).where(
            AuditLogEntry.resource_type == "users", AuditLogEntry.resource_id == str(user_id)
        )
    )
    for entry in entries:
        entry.details = _scrub(entry.details)
    session.flush()
