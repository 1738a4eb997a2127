"""The lockout that logins and current-password checks share.

Wrong passwords count toward one per-account counter (`db.users.record_login_failure`),
whether they were typed at the login or to confirm a sensitive change while signed in
(creating an API key, changing the profile, deleting the account), so a stolen session
cannot guess the password without limit. Every check does one bcrypt verification on every
branch (`verify_with_constant_work`), locked or not.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import NoReturn

from db.base import utcnow
from db.models import User
from db.users import clear_login_failures, record_login_failure
from web.database import get_session, keep_changes_on_error
from web.errors import APIError, Unauthorized
from web.extensions import current_settings
from web.request_audit import audit
from web.security.passwords import verify_with_constant_work


class AccountLocked(APIError):
    status_code = 429
    code = "account_locked"
    message = "Too many failed logins: the account is locked for a while."


def locked(seconds_left: float) -> AccountLocked:
    retry_after = str(max(1, math.ceil(seconds_left)))
    return AccountLocked(
        details={"retry_after_s": int(retry_after)}, headers={"Retry-After": retry_after}
    )


INVALID_CREDENTIALS = "The username or password is incorrect."
WRONG_CURRENT_PASSWORD = "The current password is incorrect."  # noqa: S105  (a message)


def seconds_locked(user: User) -> float:
    """How long `user` stays locked (0 when not locked)."""
    if user.locked_until is None:
        return 0.0
    return max(0.0, (user.locked_until - utcnow()).total_seconds())


def refuse_locked(
    user: User, left: float, *, action: str, details: dict[str, object] | None = None
) -> NoReturn:
    """429 `account_locked`, audited as `action` and kept although the request fails."""
    audit(action, user_id=user.id, resource_type="users", resource_id=user.id, details=details)
    keep_changes_on_error()
    raise locked(left)


def count_failure(
    user: User,
    *,
    action: str,
    message: str = INVALID_CREDENTIALS,
    details: dict[str, object] | None = None,
) -> NoReturn:
    """Count a wrong password for `user`, audit it as `action`, keep both although the
    request fails, and raise: 429 when this failure locks the account (audited as
    `auth.lockout`), else 401 `invalid_credentials` with `message`."""
    settings = current_settings()
    now = utcnow()
    count = record_login_failure(
        session=get_session(),
        user_id=user.id,
        max_failures=settings.login_max_failures,
        window=timedelta(seconds=settings.login_lockout_s),
    )
    audit(
        action,
        user_id=user.id,
        resource_type="users",
        resource_id=user.id,
        details={"failures": count.failures, **(details or {})},
    )
    keep_changes_on_error()
    if count.locked_until is not None and count.locked_until > now:
        audit(
            "auth.lockout",
            user_id=user.id,
            resource_type="users",
            resource_id=user.id,
            details={"until": count.locked_until.isoformat(), **(details or {})},
        )
        raise locked((count.locked_until - now).total_seconds())
    raise Unauthorized(message, code="invalid_credentials")


def confirm_password(user: User, password: str, *, purpose: str) -> None:
    """A signed-in caller's current password, checked like a login: the account's row is
    locked so that parallel checks take turns; a locked account is refused (429
    `account_locked`, audited `auth.password_check_locked`) after the same bcrypt work; a
    wrong password counts toward the lockout and is audited (`auth.password_check_failed`);
    the right one resets the count. `purpose` names the action in the audit entries."""
    session = get_session()
    session.refresh(user, with_for_update=True)
    rounds = current_settings().bcrypt_rounds
    right = verify_with_constant_work(password, user.password_hash, rounds)
    left = seconds_locked(user)
    if left > 0:
        refuse_locked(user, left, action="auth.password_check_locked", details={"purpose": purpose})
    if not right:
        count_failure(
            user,
            action="auth.password_check_failed",
            message=WRONG_CURRENT_PASSWORD,
            details={"purpose": purpose},
        )
    if user.failed_login_count or user.first_failed_login_at is not None:
        clear_login_failures(session=session, user=user)
