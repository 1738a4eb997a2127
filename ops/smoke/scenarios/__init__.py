"""Every scenario, in the order they run.

The order matters in two places: auth.login comes before auth.bad_password and auth.refresh's
login after it, so the one deliberate failure never adds to failures already counted toward a
lockout; and audit.trail runs once the audited actions have happened.
"""

from __future__ import annotations

from ops.smoke.runner import Scenario
from ops.smoke.scenarios import doors, fleet, identity, inference, system

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("health.live", "health", identity.health_live, "GET /health answers ok"),
    Scenario(
        "health.ready",
        "health",
        identity.health_ready,
        "GET /health/ready: PostgreSQL, Redis and the broker answer (passes if not served)",
    ),
    Scenario(
        "auth.login",
        "auth",
        identity.auth_login,
        "the admin logs in: a Bearer token pair; the account is an admin",
    ),
    Scenario(
        "auth.bad_password",
        "auth",
        identity.auth_bad_password,
        "a wrong password is refused, 401 invalid_credentials",
    ),
    Scenario(
        "auth.refresh",
        "auth",
        identity.auth_refresh,
        "a second login is refreshed (rotated pair), used, logged out, then refused",
    ),
    Scenario(
        "auth.bad_key",
        "auth",
        identity.auth_bad_key,
        "an unknown API key, an unsigned JWT and no credential are refused, 401",
    ),
    Scenario("profile.read", "profile", identity.profile_read, "GET the admin's own profile"),
    Scenario(
        "profile.update",
        "profile",
        identity.profile_update,
        "PUT the profile: refused with a wrong current password, accepted keeping the email",
    ),
    Scenario(
        "keys.create",
        "api keys",
        identity.keys_create,
        "create an API key scoped to inference (expires in a day)",
    ),
    Scenario(
        "keys.use",
        "api keys",
        identity.keys_use,
        "the key reads the models, is refused the system config (403), last_used_at is set",
        needs=("keys.create",),
    ),
    Scenario(
        "keys.revoke",
        "api keys",
        identity.keys_revoke,
        "revoke the key; it is refused at once (401) and listed as revoked",
        needs=("keys.create",),
    ),
    Scenario(
        "models.list",
        "models",
        fleet.models_list,
        "list available models; --model, if given, is one of them",
    ),
    Scenario(
        "models.detail",
        "models",
        fleet.models_detail,
        "the model used: its detail, and an online node holding it",
    ),
    Scenario(
        "nodes.list",
        "nodes",
        fleet.nodes_list,
        "list nodes: at least one online and not drained; its health endpoint agrees",
    ),
    Scenario(
        "inference.stream",
        "inference",
        inference.inference_stream,
        "submit a job over REST, follow /ws/inference/<id> to completion: seq 1, 2, 3… "
        "with no gap or repeat, the streamed text equals the stored output",
    ),
    Scenario(
        "inference.cancel",
        "inference",
        inference.inference_cancel,
        "submit a long job, cancel it after its first token: it ends cancelled, partial "
        "output kept",
    ),
    Scenario(
        "ollama.chat",
        "front doors",
        doors.ollama_chat,
        "the official ollama client chats (whole and streamed) with an API key",
    ),
    Scenario(
        "openai.stream",
        "front doors",
        doors.openai_stream,
        "the official openai client streams a chat completion with usage, with an API key",
    ),
    Scenario(
        "ws.topics",
        "websocket",
        doors.ws_topics,
        "/ws: subscribe to every topic, ping→pong, a job's statuses on `inference`, a "
        "`system_metrics` event",
    ),
    Scenario(
        "system.config",
        "system",
        system.system_config,
        "GET the run-time config; PUT retention_days ±1, read it back, revert, compare",
    ),
    Scenario(
        "audit.trail",
        "audit",
        system.audit_trail,
        "every audited action above is in GET /api/v1/system/audit, matched by request id",
    ),
    Scenario(
        "metrics.prometheus",
        "metrics",
        system.metrics,
        "GET /metrics answers Prometheus text with ollamamax_ families",
    ),
)
