"""Admins manage accounts: GET /api/v1/users, PUT and DELETE /api/v1/users/<id>."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify
from sqlalchemy import ColumnElement, func, or_, select

from db.models import Role, User
from web.database import get_session
from web.errors import NotFound
from web.openapi import documented
from web.pagination import paginate
from web.request_audit import audit
from web.schemas.common import Page
from web.schemas.users import UserAdminUpdate, UserListQuery, UserRead
from web.security.policy import Permission
from web.security.principal import authenticated, require
from web.users.accounts import (
    end_sessions,
    erase_account,
    forget_credentials,
    refuse_removing_last_admin,
    revoke_all_api_keys,
)
from web.validation import load_body, load_query

bp = Blueprint("users_admin", __name__, url_prefix="/api/v1/users")


def _live_user(user_id: uuid.UUID) -> User:
    user = get_session().get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise NotFound("No such user.")
    return user


@bp.get("")
@documented("List accounts", query=UserListQuery, responses={200: Page[UserRead]})
@require(Permission.USERS_MANAGE)
def list_users() -> Response:
    query = load_query(UserListQuery)
    conditions: list[ColumnElement[bool]] = [User.deleted_at.is_(None)]
    if query.role is not None:
        conditions.append(User.role == query.role)
    if query.active is not None:
        conditions.append(User.is_active.is_(query.active))
    if query.q:
        escaped = query.q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        conditions.append(
            or_(func.lower(User.username).like(pattern), func.lower(User.email).like(pattern))
        )
    body = paginate(
        get_session(), select(User).where(*conditions), (User.created_at, User.id), query, UserRead
    )
    return jsonify(body)


@bp.put("/<uuid:user_id>")
@documented(
    "Change an account's role, state or fair-share weight, or unlock it",
    description="Disabling an account ends its logins and revokes its API keys.",
    body=UserAdminUpdate,
    responses={200: UserRead, 409: "It is the last active admin (demote or disable)."},
)
@require(Permission.USERS_MANAGE)
def update_user(user_id: uuid.UUID) -> Response:
    change = load_body(UserAdminUpdate)
    user = _live_user(user_id)
    demoted = change.role is not None and change.role != Role.ADMIN
    disabled = change.is_active is False
    if demoted or disabled:
        refuse_removing_last_admin(user)
    before = {
        "role": user.role,
        "is_active": user.is_active,
        "fair_share_weight": user.fair_share_weight,
    }
    if "fair_share_weight" in change.model_fields_set:
        user.fair_share_weight = change.fair_share_weight
    if change.role is not None:
        user.role = change.role
    if change.is_active is not None:
        user.is_active = change.is_active
    if disabled:
        end_sessions(user.id, reason="account_disabled")
        revoke_all_api_keys(user.id)
    if change.unlock:
        user.failed_login_count = 0
        user.first_failed_login_at = None
        user.locked_until = None
        audit(
            "user.unlocked",
            user_id=authenticated().user_id,
            resource_type="users",
            resource_id=user.id,
        )
    after = {
        "role": user.role,
        "is_active": user.is_active,
        "fair_share_weight": user.fair_share_weight,
    }
    if before["role"] != after["role"] or before["is_active"] != after["is_active"]:
        forget_credentials(user_ids=[user.id])
    if before != after:
        audit(
            "user.role_changed" if before["role"] != after["role"] else "user.updated",
            user_id=authenticated().user_id,
            resource_type="users",
            resource_id=user.id,
            details={"before": before, "after": after},
        )
    return jsonify(UserRead.model_validate(user).model_dump(mode="json"))


@bp.delete("/<uuid:user_id>")
@documented(
    "Delete an account",
    responses={204: None, 409: "It is the last active admin."},
)
@require(Permission.USERS_MANAGE)
def delete_user(user_id: uuid.UUID) -> tuple[str, int]:
    user = _live_user(user_id)
    refuse_removing_last_admin(user)
    audit(
        "user.deleted",
        user_id=authenticated().user_id,
        resource_type="users",
        resource_id=user.id,
        details={"by": "admin"},
    )
    erase_account(user)
    return "", 204
