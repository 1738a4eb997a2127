"""The fleet: models and nodes."""

from __future__ import annotations

from typing import Any

from ops.smoke.context import Context, canonical_model
from ops.smoke.outcomes import Failed, Skipped, check


def _find(models: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    wanted = {name, canonical_model(name)}
    return next((model for model in models if model["name"] in wanted), None)


def models_list(ctx: Context) -> str:
    models = ctx.available_models()
    names = [model["name"] for model in models]
    check(names, "the fleet lists no available model: no node holds one")
    check(
        all(model["status"] == "available" for model in models),
        "?status=available listed models that are not available",
    )
    if ctx.options.model:
        check(
            _find(models, ctx.options.model),
            f"--model {ctx.options.model} is not available; available: {', '.join(names)}",
        )
    shown = ", ".join(names[:8]) + (f" (+{len(names) - 8})" if len(names) > 8 else "")
    return f"{len(names)} available: {shown}; using {ctx.model()}"


def models_detail(ctx: Context) -> str:
    name = ctx.model()
    try:
        listed = _find(ctx.available_models(), name)
    except Failed as failure:
        raise Skipped(f"needs the model list ({failure})") from None
    check(listed, f"{name} is not among the available models")
    assert listed is not None
    token, path = ctx.admin_token(), f"/api/v1/models/{listed['id']}"
    model = ctx.api.call("GET", path, token=token).json()
    check(model["name"] == listed["name"], f"the detail is of {model['name']}, not {name}")
    check(model["status"] == "available", f"{model['name']} is {model['status']}")
    replicas = ctx.api.call("GET", path + "/replicas", token=token).json()["items"]
    serving = [
        replica["node_name"]
        for replica in replicas
        if replica["status"] == "available" and replica["node_status"] == "online"
    ]
    check(serving, f"no online node holds {model['name']}: replicas {replicas}")
    return f"{model['name']}: available, on {len(serving)} online node(s): {', '.join(serving)}"


def nodes_list(ctx: Context) -> str:
    token = ctx.admin_token()
    nodes = ctx.api.call("GET", "/api/v1/nodes/", token=token, params={"per_page": 100}).json()
    items = nodes["items"]
    online = [node for node in items if node["status"] == "online"]
    check(online, f"no node is online ({len(items)} known: {[n['status'] for n in items]})")
    first = online[0]
    health = ctx.api.call("GET", f"/api/v1/nodes/{first['id']}/health", token=token).json()
    check(health["status"] == "online", f"{first['name']}'s health says {health}")
    serving = [node for node in online if not node["drained"]]
    check(serving, "every online node is drained: nothing takes jobs")
    return (
        f"{nodes['total']} node(s), {len(online)} online, {len(online) - len(serving)} drained; "
        f"{first['name']} last beat {health.get('heartbeat_age_s')} s ago"
    )
