"""Account operations that reach both the database and the token blocklist."""

from __future__ import annotations

import uuid

from db.credentials import live_families, revoke_families, revoke_user_api_keys
from db.models import Role, User
from db.users import count_active_admins, erase_personal_data, lock_admins
from web.database import after_commit, get_session
from web.errors import Conflict
from web.security.principal import principal_cache
from web.security.tokens import revoke_families_now


def forget_credentials(
    *, user_ids: list[uuid.UUID] | None = None, api_key_ids: list[uuid.UUID] | None = None
) -> None:
    """After a change to accounts or keys: every process stops serving what it remembered
    about them, now and again once the change is committed (a request racing the commit
    could otherwise remember the old rows again)."""

    def forget() -> None:
        principal_cache().forget(user_ids=user_ids or (), api_key_ids=api_key_ids or ())

    forget()
    after_commit(forget)


def revoke_all_api_keys(user_id: uuid.UUID) -> None:
    revoke_user_api_keys(session=get_session(), user_id=user_id)
    forget_credentials(user_ids=[user_id])


def end_logins(family_ids: list[uuid.UUID], *, reason: str) -> None:
    """Revoke these logins: their refresh tokens in the database and, through the blocklist,
    every access token they issued. Always both, for every family asked for."""
    revoke_families(session=get_session(), family_ids=family_ids, reason=reason)
    revoke_families_now(family_ids)


def end_sessions(
    user_id: uuid.UUID, *, reason: str, except_family: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Revoke the user's logins (all, or all but one): refresh tokens in the database,
    access tokens at once through the blocklist."""
    families = live_families(session=get_session(), user_id=user_id, except_family=except_family)
    end_logins(families, reason=reason)
    return families


def erase_account(user: User) -> None:
    """Every credential revoked, personal data anonymised, aggregate usage kept."""
    end_sessions(user.id, reason="account_deleted")
    revoke_all_api_keys(user.id)
    erase_personal_data(session=get_session(), user=user)


def refuse_removing_last_admin(user: User) -> None:
    """409 if `user` is the only active admin (call before demoting, disabling or deleting)."""
    if user.role != Role.ADMIN or not user.is_active:
        return
    lock_admins(session=get_session())
    if count_active_admins(session=get_session()) <= 1:
        raise Conflict("The last admin cannot be demoted, disabled or deleted.", code="last_admin")
