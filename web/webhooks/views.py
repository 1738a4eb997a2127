"""Webhooks over REST: a job's delivery log and its redelivery, the account's signing
secret (docs/webhooks.md)."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify

from db.models import ApiKey
from db.webhooks import deliveries_of, redeliver, rotate_secret, secret_of
from web.database import get_session
from web.errors import Conflict, NotFound
from web.inference.service import visible_request
from web.openapi import documented
from web.request_audit import audit
from web.schemas.users import ApiKeyRead, ApiKeyUpdate
from web.schemas.webhooks import Redelivered, WebhookLog, WebhookSecretRead
from web.security.policy import Permission
from web.security.principal import authenticated, require
from web.users.accounts import forget_credentials
from web.validation import load_body
from web.webhooks.guard import checked_webhook

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")

SIGNING_NOTE = (
    "Every webhook of the account is signed with this secret (Standard Webhooks: "
    "`webhook-signature` is `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under "
    "the base64 key after `whsec_`). It is made on first use."
)


@bp.get("/inference/requests/<uuid:request_id>/webhook")
@documented(
    "A job's webhook deliveries: each attempt, its answer, the next try",
    description="Readable by the job's owner (and by callers with inference:read_all).",
    responses={200: WebhookLog},
)
@require(Permission.INFERENCE_READ_OWN)
def delivery_log(request_id: uuid.UUID) -> Response:
    row = visible_request(request_id)
    log = WebhookLog.model_validate(
        {
            "request_id": row.id,
            "webhook_url": row.webhook_url,
            "deliveries": deliveries_of(session=get_session(), request_id=row.id),
        }
    )
    return jsonify(log.model_dump(mode="json"))


@bp.post("/inference/requests/<uuid:request_id>/webhook/redeliver")
@documented(
    "Deliver a job's webhook again, now",
    description="Each of the job's deliveries becomes due at once with a fresh retry window, "
    "whether it was delivered, given up or still retrying. Same `webhook-id` as before: a "
    "receiver that already has the message can drop it.",
    responses={
        202: Redelivered,
        409: "The job has no webhook delivery (no webhook URL, or it has not ended yet).",
    },
)
@require(Permission.INFERENCE_SUBMIT)
def redeliver_webhook(request_id: uuid.UUID) -> tuple[Response, int]:
    row = visible_request(request_id)
    principal = authenticated()
    if row.user_id != principal.user_id and not principal.can(Permission.INFERENCE_CANCEL_ALL):
        raise NotFound("No such request.")
    count = redeliver(session=get_session(), request_id=row.id)
    if count == 0:
        raise Conflict(
            "The request has no webhook delivery (no webhook URL, or it has not ended).",
            code="no_webhook_delivery",
        )
    return jsonify(Redelivered(request_id=row.id, deliveries=count).model_dump(mode="json")), 202


@bp.get("/users/webhook-secret")
@documented(
    "The account's webhook signing secret",
    description=SIGNING_NOTE,
    responses={200: WebhookSecretRead},
)
@require(Permission.PROFILE)
def webhook_secret() -> Response:
    secret = secret_of(session=get_session(), user_id=authenticated().user_id)
    return jsonify(WebhookSecretRead(secret=secret).model_dump(mode="json"))


@bp.post("/users/webhook-secret")
@documented(
    "Rotate the account's webhook signing secret",
    description="Attempts from now on are signed with the new secret, retries of earlier "
    "deliveries included; receivers should accept both secrets while they switch.",
    responses={200: WebhookSecretRead},
)
@require(Permission.PROFILE)
def rotate_webhook_secret() -> Response:
    secret = rotate_secret(session=get_session(), user_id=authenticated().user_id)
    return jsonify(WebhookSecretRead(secret=secret).model_dump(mode="json"))


@bp.patch("/users/api-keys/<uuid:key_id>")
@documented(
    "Change one of the caller's API keys: its default webhook",
    body=ApiKeyUpdate,
    responses={200: ApiKeyRead, 400: "The webhook_url is refused (docs/webhooks.md)."},
)
@require(Permission.PROFILE)
def update_api_key(key_id: uuid.UUID) -> Response:
    principal = authenticated()
    row = get_session().get(ApiKey, key_id)
    if row is None or row.user_id != principal.user_id or row.revoked_at is not None:
        raise NotFound("No such API key.")
    change = load_body(ApiKeyUpdate)
    row.webhook_url = checked_webhook(change.webhook_url)
    # Every process forgets what it remembered about the key (its old default included).
    forget_credentials(api_key_ids=[row.id])
    audit(
        "api_key.updated",
        user_id=principal.user_id,
        resource_type="api_keys",
        resource_id=row.id,
        details={"webhook_url": row.webhook_url},
    )
    return jsonify(ApiKeyRead.model_validate(row).model_dump(mode="json"))
