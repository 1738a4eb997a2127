"""/api/v1/system/*: run-time config (admins), stats (operators), the audit trail (admins)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic import ValidationError
from sqlalchemy.orm import Session

from config.runtime import RuntimeConfig
from config.settings import Settings
from db.audit_trail import NEWEST_FIRST, AuditFilters, entries_query
from db.stats import (
    THROUGHPUT_WINDOW,
    LiveStats,
    UserQueue,
    dashboard,
    live_stats,
    queue_by_user,
    refresh_dashboard,
)
from db.system_config import delete_values, store_values, stored_values
from web.database import after_commit, get_session
from web.errors import ValidationFailed, validation_details
from web.extensions import current_settings
from web.openapi import documented
from web.pagination import paginate
from web.request_audit import audit
from web.schemas.common import Page
from web.schemas.system import (
    AuditEntryRead,
    AuditListQuery,
    ConfigChange,
    ConfigEntry,
    ConfigRead,
    DashboardStats,
    LiveStatsRead,
    NodeStatusStats,
    QueueStats,
    RunningStats,
    StatsQuery,
    StatsRead,
    ThroughputStats,
    UserQueueStats,
)
from web.security.policy import Permission
from web.security.principal import authenticated, require
from web.validation import load_body, load_query

bp = Blueprint("system", __name__, url_prefix="/api/v1/system")

# Beat refreshes dashboard_stats every minute; a view older than this means beat is not
# running (or is far behind), so the read refreshes it itself rather than serve stale numbers.
DASHBOARD_MAX_AGE_S = 120.0


def _config_body(session: Session) -> dict[str, Any]:
    """Every setting as stored now in this transaction: never the per-process memo, and a
    PUT's own answer (built before its commit) already shows the change."""
    settings = current_settings()
    stored = stored_values(session=session)
    defaults = RuntimeConfig.defaults(settings)
    current = RuntimeConfig.merged(settings, stored)
    entries = {
        name: ConfigEntry(
            value=getattr(current, name),
            default=getattr(defaults, name),
            overridden=name in stored,
            description=field.description or "",
        )
        for name, field in RuntimeConfig.model_fields.items()
    }
    return ConfigRead(config=entries).model_dump(mode="json")


def _checked_change(
    body: dict[str, Any], stored: dict[str, Any], settings: Settings
) -> tuple[dict[str, Any], list[str]]:
    """(values to store, keys to reset), or a 422 that lists every problem at once. The
    result is validated as a whole, strictly: "5" is not an int and 1 is not a bool."""
    fields = RuntimeConfig.model_fields
    problems: list[dict[str, str]] = []
    if not body:
        problems.append(
            {"field": "body", "message": "give at least one setting", "type": "missing"}
        )
    problems += [
        {
            "field": f"body.{key[:100]}",
            "message": f"not a run-time setting; known: {', '.join(fields)}",
            "type": "unknown_setting",
        }
        for key in body
        if key not in fields
    ]
    resets = sorted(key for key, value in body.items() if value is None and key in fields)
    sets = {key: value for key, value in body.items() if value is not None and key in fields}
    kept = {key: value for key, value in stored.items() if key not in resets}
    validated: RuntimeConfig | None = None
    try:
        validated = RuntimeConfig.model_validate(
            {**RuntimeConfig.merged(settings, kept).model_dump(), **sets}, strict=True
        )
    except ValidationError as error:
        problems += validation_details(error, prefix="body")
    ceiling = settings.max_generation_s
    wanted = sets.get("max_generation_s")
    if type(wanted) is int and wanted > ceiling:
        problems.append(
            {
                "field": "body.max_generation_s",
                "message": f"at most {ceiling} (the environment's MAX_GENERATION_S)",
                "type": "less_than_equal",
            }
        )
    if problems or validated is None:
        raise ValidationFailed(details=problems)
    return {key: getattr(validated, key) for key in sets}, resets


@bp.get("/config")
@documented("The run-time config: each setting's value and default", responses={200: ConfigRead})
@require(Permission.SYSTEM_CONFIG)
def read_config() -> Response:
    return jsonify(_config_body(get_session()))


@bp.put("/config")
@documented(
    "Change run-time settings",
    description="Set some settings; a null value removes the stored one (the environment's "
    "default applies again). Every process uses the change within LIVE_CONFIG_TTL_S.",
    body=ConfigChange,
    responses={200: ConfigRead},
)
@require(Permission.SYSTEM_CONFIG)
def update_config() -> Response:
    """Set some settings; a null value removes the stored one (the default applies again)."""
    body = load_body(ConfigChange).root
    session = get_session()
    stored = stored_values(session=session)
    values, resets = _checked_change(body, stored, current_settings())
    changed = {
        key: value for key, value in values.items() if key not in stored or stored[key] != value
    }
    user_id = authenticated().user_id
    store_values(session=session, values=changed, user_id=user_id)
    removed = delete_values(session=session, keys=resets)
    if changed or removed:
        audit(
            "system.config_changed",
            user_id=user_id,
            resource_type="system_config",
            details={"keys": sorted({*changed, *removed}), "set": changed, "reset": removed},
        )
        # Every process (this one included) re-reads at its next use, but only once the
        # change is committed: an invalidation before it would let old rows be cached again.
        after_commit(current_app.extensions["runtime_config"].changed)
    return jsonify(_config_body(session))


def _stats_body(
    row: dict[str, Any] | None, live: LiveStats, by_user: list[UserQueue]
) -> dict[str, Any]:
    window_s = int(THROUGHPUT_WINDOW.total_seconds())
    tokens, duration_ns = live.completion_tokens_1m, live.eval_duration_ns_1m
    view = None
    if row is not None:
        age_s = max(0.0, (live.at - row["refreshed_at"]).total_seconds())
        view = DashboardStats(**row, age_s=round(age_s, 3))
    return StatsRead(
        dashboard=view,
        live=LiveStatsRead(
            at=live.at,
            queue=QueueStats(
                total=sum(live.queued_by_model.values()),
                by_model=live.queued_by_model,
                by_priority=dict(sorted(live.queued_by_priority.items(), reverse=True)),
                by_user=[UserQueueStats(**vars(entry)) for entry in by_user],
            ),
            running=RunningStats(
                total=sum(live.running_by_model.values()), by_model=live.running_by_model
            ),
            nodes={status: NodeStatusStats(**counts) for status, counts in live.nodes.items()},
            throughput=ThroughputStats(
                window_s=window_s,
                requests_completed=live.completed_1m,
                completion_tokens=tokens,
                tokens_per_s=round(tokens / window_s, 3),
                generation_tokens_per_s=(
                    round(tokens * 1e9 / duration_ns, 3) if duration_ns else None
                ),
            ),
        ),
    ).model_dump(mode="json")


@bp.get("/stats")
@documented(
    "Fleet statistics: the dashboard and live figures",
    query=StatsQuery,
    responses={200: StatsRead},
)
@require(Permission.SYSTEM_STATS)
def read_stats() -> Response:
    """The dashboard view (refreshed first when older than DASHBOARD_MAX_AGE_S, or when
    ?refresh=true) and the live figures it cannot hold."""
    query = load_query(StatsQuery)
    session = get_session()
    refresh_dashboard(session=session, older_than_s=0 if query.refresh else DASHBOARD_MAX_AGE_S)
    live = live_stats(session=session)
    top = current_settings().fair_share_metrics_top_users
    by_user = queue_by_user(session=session, top=top)
    return jsonify(_stats_body(dashboard(session=session), live, by_user))


@bp.get("/audit")
@documented(
    "The audit trail, newest first",
    query=AuditListQuery,
    responses={200: Page[AuditEntryRead]},
)
@require(Permission.AUDIT_READ)
def list_audit() -> Response:
    query = load_query(AuditListQuery)
    filters = AuditFilters(
        user_id=query.user_id,
        action=query.action,
        resource_type=query.resource_type,
        resource_id=query.resource_id,
        since=query.since,
        until=query.until,
    )
    body = paginate(get_session(), entries_query(filters), NEWEST_FIRST, query, AuditEntryRead)
    return jsonify(body)
