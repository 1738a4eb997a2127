"""Quotas as accounts see them: GET /api/v1/users/me/usage for the caller; for admins, any
account's usage and PUT /api/v1/users/<id>/quotas to set its own (web/inference/quotas.py
has the rules)."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, current_app, jsonify

from db.models import User
from web.database import get_session
from web.errors import NotFound
from web.extensions import current_runtime_config
from web.inference.quotas import account_limits, report
from web.openapi import documented
from web.realtime.seats import seats_held
from web.request_audit import audit
from web.schemas.users import Limits, QuotaValues, UsageNow, UsageRead
from web.security.policy import Permission
from web.security.principal import authenticated, require
from web.users.accounts import forget_credentials
from web.validation import load_body

bp = Blueprint("users_quotas", __name__, url_prefix="/api/v1/users")


def _usage(user: User) -> Response:
    limits = account_limits(user.role, dict(user.quotas or {}), current_runtime_config())
    now = report(
        session=get_session(),
        user_id=user.id,
        limits=limits,
        websockets=seats_held(current_app.extensions["redis"], user.id),
    )
    body = UsageRead(
        user_id=user.id,
        day=now.day.isoformat(),
        limits=Limits(**limits.__dict__),
        own_quotas=dict(user.quotas or {}),
        usage=UsageNow(
            queued_jobs=now.usage.queued,
            running_jobs=now.usage.running,
            tokens_today=now.usage.tokens_today,
            jobs_today=now.usage.jobs_today,
            websockets=now.websockets,
        ),
    )
    return jsonify(body.model_dump(mode="json"))


def _account(user_id: uuid.UUID) -> User:
    user = get_session().get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise NotFound("No such user.")
    return user


@bp.get("/me/usage")
@documented("The caller's quotas and what it uses of them now", responses={200: UsageRead})
@require(Permission.PROFILE)
def my_usage() -> Response:
    return _usage(authenticated().user)


@bp.get("/<uuid:user_id>/usage")
@documented("An account's quotas and what it uses of them now", responses={200: UsageRead})
@require(Permission.USERS_MANAGE)
def user_usage(user_id: uuid.UUID) -> Response:
    return _usage(_account(user_id))


@bp.put("/<uuid:user_id>/quotas")
@documented(
    "Set an account's own quotas",
    description="Each quota given replaces the account's; null (or absent) returns it to the "
    "run-time default, 0 means no limit. Applies to jobs submitted and sockets opened from "
    "now on.",
    body=QuotaValues,
    responses={200: UsageRead},
)
@require(Permission.USERS_MANAGE)
def set_quotas(user_id: uuid.UUID) -> Response:
    change = load_body(QuotaValues)
    user = _account(user_id)
    before = dict(user.quotas or {})
    user.quotas = change.stored()
    if before != user.quotas:
        forget_credentials(user_ids=[user.id])  # principals carry the account's quotas
        audit(
            "user.quotas_changed",
            user_id=authenticated().user_id,
            resource_type="users",
            resource_id=user.id,
            details={"before": before, "after": user.quotas},
        )
    return _usage(user)
