"""Run-time config (a harmless change, reverted), the audit trail, Prometheus metrics."""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from typing import Any

from ops.smoke.api import describe
from ops.smoke.context import Context
from ops.smoke.outcomes import Failed, Skipped, check

CONFIG = "/api/v1/system/config"
# Keeping finished jobs one day longer (or, at the ceiling, one day less) for the second the
# change lives is the most harmless setting there is to change.
SETTING = "retention_days"
RETENTION_CEILING = 3650
METRIC_LINE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+( \S+)?$")


def revert_body(entry: dict[str, Any]) -> dict[str, Any]:
    """The PUT that restores a setting as GET showed it: its stored value, or `null` when it
    was not overridden (null means "back to the environment's default", not "store it")."""
    return {SETTING: entry["value"] if entry["overridden"] else None}


def _entry(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("config") or {}
    check(SETTING in config, f"the config has no {SETTING}: {sorted(config)}")
    return config[SETTING]  # type: ignore[no-any-return]


def system_config(ctx: Context) -> str:
    token = ctx.admin_token()
    original = _entry(ctx.api.call("GET", CONFIG, token=token).json())
    before = original["value"]
    changed = before + 1 if before < RETENTION_CEILING else before - 1
    ctx.config_revert = revert_body(original)  # set first: cleanup undoes even a lost answer
    response = ctx.api.call("PUT", CONFIG, token=token, json={SETTING: changed})
    ctx.expect_audit("system.config_changed", response)
    check(
        _entry(response.json())["value"] == changed,
        f"PUT answered {SETTING} = {_entry(response.json())['value']}, not {changed}",
    )
    read_back = _entry(ctx.api.call("GET", CONFIG, token=token).json())
    check(read_back["value"] == changed, f"GET after PUT shows {read_back['value']}")
    check(read_back["overridden"] is True, "the changed setting is not marked overridden")
    response = ctx.api.call("PUT", CONFIG, token=token, json=ctx.config_revert)
    ctx.expect_audit("system.config_changed", response)
    ctx.config_revert = None
    restored = _entry(ctx.api.call("GET", CONFIG, token=token).json())
    check(restored == original, f"after the revert {SETTING} is {restored}, was {original}")
    how = "its stored value" if original["overridden"] else "the default"
    return f"{SETTING} {before} → {changed} → {before} ({how} again)"


def audit_trail(ctx: Context) -> str:
    if not ctx.expected_audit:
        raise Skipped("needs a scenario that writes the audit trail to have passed")
    check(ctx.admin is not None and ctx.admin.role == "admin", "needs an admin")
    assert ctx.admin is not None
    params: dict[str, Any] = {"user_id": ctx.admin.user_id, "per_page": 100}
    if ctx.api.server_time is not None:  # the server's clock, from its Date header
        params["since"] = (ctx.api.server_time - timedelta(minutes=2)).isoformat()
    found: set[tuple[str, str]] = set()
    for page in range(1, 11):
        params["page"] = page
        body = ctx.api.call("GET", "/api/v1/system/audit", token=ctx.admin_token(), params=params)
        items = body.json()["items"]
        found |= {(item["action"], item["request_id"]) for item in items if item["request_id"]}
        if len(items) < params["per_page"]:
            break
    missing = [entry for entry in ctx.expected_audit if entry not in found]
    if missing:
        shown = ", ".join(f"{action} ({request_id})" for action, request_id in missing)
        raise Failed(f"{len(missing)} of {len(ctx.expected_audit)} entries missing: {shown}")
    counts = Counter(action for action, _ in ctx.expected_audit)
    listed = ", ".join(f"{a} x{n}" if n > 1 else a for a, n in sorted(counts.items()))
    return f"all {len(ctx.expected_audit)} expected entries, by request id: {listed}"


def metrics(ctx: Context) -> str:
    token = ctx.options.metrics_token
    response = ctx.api.get_plain("/metrics", token)
    if response.status_code == 401 and not token:
        raise Failed("GET /metrics wants a token: pass --metrics-token (METRICS_TOKEN)")
    if response.status_code != 200:
        raise Failed(f"GET /metrics answered {describe(response)}")
    content_type = response.headers.get("Content-Type", "")
    check(
        content_type.startswith(("text/plain", "application/openmetrics-text")),
        f"GET /metrics is {content_type!r}, not Prometheus text",
    )
    families = sorted(
        line.split()[2]
        for line in response.text.splitlines()
        if line.startswith("# TYPE ") and len(line.split()) >= 4
    )
    ours = [name for name in families if name.startswith("ollamamax_")]
    check(ours, f"no ollamamax_ family among {len(families)}: {families[:10]}")
    malformed = [
        line
        for line in response.text.splitlines()
        if line and not line.startswith("#") and not METRIC_LINE.match(line)
    ]
    check(not malformed, f"lines that are not Prometheus samples: {malformed[:3]}")
    shown = ", ".join(ours[:6]) + (f" (+{len(ours) - 6})" if len(ours) > 6 else "")
    return f"{len(ours)} ollamamax_ families: {shown}"
