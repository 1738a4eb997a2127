"""OpenAPI links: which answer feeds which next call (a job's id to read or cancel it, a
registered model's id to change it, a login's tokens to refresh or log out...).

Clients read them as "what you can do next with this answer"; schemathesis's stateful phase
follows them to chain calls (tests/web/test_openapi_fuzz.py). Links name operations by their
operationId (the endpoint: `inference_read_request`) and take values with OpenAPI runtime
expressions (`$response.body#/id`, `$request.path.model_id`); a parameter prefixed with
`header.` is sent as that header. A link between operations the app has (an app built from
a few blueprints has fewer) is written; one whose status or path parameter does not fit them
is a bug, and building the document says so (tests/web/test_openapi.py also checks that every
link's ends are in the app's document).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

ACCESS = "Bearer {$response.body#/access_token}"
REFRESH = "Bearer {$response.body#/refresh_token}"


@dataclass(frozen=True)
class Link:
    source: str  # operationId
    status: int
    name: str
    target: str  # operationId
    description: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None  # merged into the target's body


def _fan_out(
    sources: Iterable[tuple[str, int, str]],
    targets: Iterable[tuple[str, str, str]],
    parameter: str,
) -> Iterator[Link]:
    """One link from each (source, status, where the id is) to each (target, name, why)."""
    for source, status, pointer in sources:
        for target, name, description in targets:
            if target != source:
                yield Link(source, status, name, target, description, {parameter: pointer})


def _jobs() -> Iterator[Link]:
    submitted = [
        (source, status, "$response.body#/id")
        for source in ("inference_generate", "inference_chat", "inference_embed")
        for status in (202, 200)
    ]
    follow_up = [
        ("inference_read_request", "ReadRequest", "The job: its state, output and metrics."),
        ("inference_cancel_request", "CancelRequest", "Cancel the job."),
        ("realtime_request_stream", "FollowRequest", "Follow the job's events (WebSocket)."),
        ("webhooks_delivery_log", "ReadWebhookLog", "The job's webhook deliveries."),
        ("webhooks_redeliver_webhook", "RedeliverWebhook", "Deliver the job's webhook again."),
    ]
    yield from _fan_out(
        [
            *submitted,
            ("inference_list_requests", 200, "$response.body#/items/0/id"),
            ("inference_read_request", 200, "$response.body#/id"),
        ],
        follow_up,
        "path.request_id",
    )


def _models() -> Iterator[Link]:
    by_id = [
        ("models_read_model", "ReadModel", "The model."),
        ("models_update_model", "UpdateModel", "Change the model, or disable it."),
        ("models_delete_model", "DeleteModel", "Remove the model from the registry."),
        ("models_list_replicas", "ListReplicas", "Where the model is."),
        ("models_pull_model", "PullModel", "Pull the model onto nodes."),
    ]
    yield from _fan_out(
        [
            ("models_register_model", 201, "$response.body#/id"),
            ("models_list_models", 200, "$response.body#/items/0/id"),
            ("models_read_model", 200, "$response.body#/id"),
            ("models_update_model", 200, "$response.body#/id"),
        ],
        by_id,
        "path.model_id",
    )
    for source, status, name in (
        ("models_register_model", 201, "$response.body#/name"),
        ("models_list_models", 200, "$response.body#/items/0/name"),
    ):
        yield Link(
            source,
            status,
            "ReadOpenAIModel",
            "openai_compat_read_model",
            "The model as the OpenAI API shows it.",
            {"path.name": name},
        )
        yield Link(
            source,
            status,
            "ShowOllamaModel",
            "ollama_compat_show",
            "The model as the Ollama API shows it.",
            body={"model": name},
        )
    for source, status, name in (
        ("models_list_models", 200, "$response.body#/items/0/name"),
        ("models_read_model", 200, "$response.body#/name"),
        ("openai_compat_list_models", 200, "$response.body#/data/0/id"),  # served now
    ):
        for target, link_name in (
            ("inference_generate", "Generate"),
            ("inference_chat", "Chat"),
            ("inference_embed", "Embed"),
        ):
            yield Link(
                source,
                status,
                link_name,
                target,
                "Submit a job for the model.",
                body={"model": name},
            )
    same_model = {"path.model_id": "$request.path.model_id"}
    for source, status, node in (
        ("models_pull_model", 202, "$response.body#/nodes/0/id"),
        ("models_list_replicas", 200, "$response.body#/items/0/node_id"),
    ):
        yield Link(
            source,
            status,
            "RemoveReplica",
            "models_remove_replica",
            "Remove the model from that node's engine.",
            {**same_model, "path.node_id": node},
        )
        yield Link(
            source, status, "ReadNode", "nodes_read_node", "The node.", {"path.node_id": node}
        )
    for source, status in (("models_pull_model", 202), ("models_remove_replica", 202)):
        yield Link(
            source, status, "ListReplicas", "models_list_replicas", "Where it is now.", same_model
        )


def _nodes() -> Iterator[Link]:
    yield from _fan_out(
        [
            ("nodes_list_nodes", 200, "$response.body#/items/0/id"),
            ("nodes_read_node", 200, "$response.body#/id"),
            ("nodes_update_node", 200, "$response.body#/id"),
        ],
        [
            ("nodes_read_node", "ReadNode", "The node with its load."),
            ("nodes_update_node", "UpdateNode", "Label, resize, drain or undrain the node."),
            ("nodes_decommission_node", "DecommissionNode", "Decommission the node."),
            ("nodes_node_health", "NodeHealth", "Whether the node is alive."),
        ],
        "path.node_id",
    )
    yield Link(
        "nodes_list_nodes",
        200,
        "FollowFleet",
        "realtime_topic_socket",
        "Follow the fleet's topics live (WebSocket).",
    )


def _accounts() -> Iterator[Link]:
    yield Link(
        "auth_register",
        201,
        "Login",
        "auth_login",
        "Log in to the new account.",
        body={"username": "$request.body#/username", "password": "$request.body#/password"},
    )
    yield from _fan_out(
        [
            ("auth_register", 201, "$response.body#/id"),
            ("users_admin_list_users", 200, "$response.body#/items/0/id"),
            ("users_admin_update_user", 200, "$response.body#/id"),
            ("users_profile", 200, "$response.body#/id"),
            ("users_quotas_set_quotas", 200, "$request.path.user_id"),
            ("system_list_audit", 200, "$response.body#/items/0/user_id"),
        ],
        [
            ("users_admin_update_user", "UpdateUser", "Change the account's role or state."),
            ("users_admin_delete_user", "DeleteUser", "Delete the account."),
            ("users_quotas_set_quotas", "SetQuotas", "Set the account's own quotas."),
            ("users_quotas_user_usage", "ReadUsage", "The account's usage and limits."),
        ],
        "path.user_id",
    )
    yield from _session_links()
    for source, status in (("users_profile", 200), ("users_update_profile", 200)):
        for target, name, description in (
            ("users_profile", "ReadProfile", "The caller's profile."),
            ("users_update_profile", "UpdateProfile", "Change the caller's email or password."),
            ("users_quotas_my_usage", "ReadMyUsage", "The caller's usage and limits."),
            ("users_export_me", "ExportMe", "Everything held about the caller."),
            ("webhooks_webhook_secret", "ReadWebhookSecret", "The webhook signing secret."),
            ("webhooks_rotate_webhook_secret", "RotateWebhookSecret", "Rotate that secret."),
        ):
            if target != source:
                yield Link(source, status, name, target, description)
    for source, status, pointer in (
        ("users_create_api_key", 201, "$response.body#/id"),
        ("users_api_key_list", 200, "$response.body#/items/0/id"),
    ):
        yield Link(
            source,
            status,
            "RevokeApiKey",
            "users_revoke_api_key",
            "Revoke the key.",
            {"path.key_id": pointer},
        )
        yield Link(
            source,
            status,
            "UpdateApiKey",
            "webhooks_update_api_key",
            "Change the key's default webhook.",
            {"path.key_id": pointer},
        )
    yield Link(
        "users_create_api_key",
        201,
        "UseApiKey",
        "users_profile",
        "Call with the new key.",
        {"header.Authorization": "Bearer {$response.body#/key}"},
    )
    yield Link(
        "users_sessions",
        200,
        "EndSession",
        "users_end_session",
        "End the login.",
        {"path.session_id": "$response.body#/items/0/id"},
    )


def _session_links() -> Iterator[Link]:
    """What a login's (or a refresh's) tokens open."""
    for source in ("auth_login", "auth_refresh"):
        yield Link(
            source,
            200,
            "Refresh",
            "auth_refresh",
            "Trade the refresh token for a new pair (it is spent).",
            {"header.Authorization": REFRESH},
        )
        for target, name, description in (
            ("users_profile", "ReadProfile", "The account's profile."),
            ("users_sessions", "ListSessions", "The account's logins."),
            ("users_logout", "Logout", "End this login."),
        ):
            yield Link(source, 200, name, target, description, {"header.Authorization": ACCESS})
    sent_password = "$request.body#/password"  # noqa: S105 (an expression, not a secret)
    yield Link(
        "auth_login",
        200,
        "CreateApiKey",
        "users_create_api_key",
        "Create an API key for the account (its password confirms).",
        {"header.Authorization": ACCESS},
        body={"current_password": sent_password},
    )
    yield Link(
        "auth_login",
        200,
        "DeleteAccount",
        "users_delete_me",
        "Delete the account (its password confirms).",
        {"header.Authorization": ACCESS},
        body={"password": sent_password},
    )


def _audit_trails() -> Iterator[Link]:
    """What was done to a changed account, model or node (the audit trail names them by
    resource type and id), and what an account did."""
    for source, status, resource_type in (
        ("users_admin_update_user", 200, "users"),
        ("models_register_model", 201, "model"),
        ("models_update_model", 200, "model"),
        ("nodes_update_node", 200, "node"),
    ):
        yield Link(
            source,
            status,
            "AuditTrail",
            "system_list_audit",
            "What was done to it, newest first.",
            {"query.resource_type": resource_type, "query.resource_id": "$response.body#/id"},
        )
    for source, pointer in (
        ("users_admin_list_users", "$response.body#/items/0/id"),
        ("users_profile", "$response.body#/id"),
    ):
        yield Link(
            source,
            200,
            "Actions",
            "system_list_audit",
            "What the account did, newest first.",
            {"query.user_id": pointer},
        )


def _system() -> Iterator[Link]:
    yield Link(
        "system_read_config",
        200,
        "UpdateConfig",
        "system_update_config",
        "Change the run-time config.",
    )
    yield Link("health_liveness", 200, "Readiness", "health_readiness", "Whether it can serve.")
    yield Link("openapi_document", 200, "Docs", "openapi_docs", "This document, for humans.")
    yield Link("openapi_docs", 200, "Asset", "openapi_asset", "The files the page loads.")


def _doors() -> Iterator[Link]:
    yield Link("ollama_compat_root", 200, "Version", "ollama_compat_version", "The version.")
    tag = "$response.body#/models/0/name"
    for source in ("ollama_compat_tags", "ollama_compat_running_models"):
        yield Link(source, 200, "Show", "ollama_compat_show", "The model.", body={"model": tag})
    for target, name, description in (
        ("ollama_compat_generate", "Generate", "Generate with the model."),
        ("ollama_compat_chat", "Chat", "Chat with the model."),
        ("ollama_compat_pull", "Pull", "Pull the model onto every Ollama node."),
        ("ollama_compat_delete", "Delete", "Remove the model from every node."),
        ("ollama_compat_embed", "Embed", "Embed text with the model."),
        ("ollama_compat_embeddings", "Embeddings", "Embed one prompt (the older call)."),
    ):
        yield Link("ollama_compat_tags", 200, name, target, description, body={"model": tag})
    yield Link(
        "ollama_compat_tags",
        200,
        "Blob",
        "ollama_compat_refused_blobs",
        "Push a blob of the model (refused: models come from registries).",
        {"path.digest": "$response.body#/models/0/digest"},
    )
    for target, name in (
        ("ollama_compat_refused_copy", "Copy"),
        ("ollama_compat_refused_push", "Push"),
        ("ollama_compat_refused_create", "Create"),
    ):
        yield Link("ollama_compat_tags", 200, name, target, "Refused here (docs/compat.md).")
    listed = "$response.body#/data/0/id"
    yield Link(
        "openai_compat_list_models",
        200,
        "ReadModel",
        "openai_compat_read_model",
        "The model.",
        {"path.name": listed},
    )
    for target, name in (
        ("openai_compat_chat_completions", "ChatCompletion"),
        ("openai_compat_completions", "Completion"),
        ("openai_compat_embeddings", "Embeddings"),
    ):
        yield Link(
            "openai_compat_list_models", 200, name, target, "Use the model.", body={"model": listed}
        )


def links() -> list[Link]:
    return [*_jobs(), *_models(), *_nodes(), *_accounts(), *_audit_trails(), *_system(), *_doors()]


def add_links(paths: dict[str, dict[str, Any]], found: Iterable[Link] | None = None) -> None:
    """Write each link into its source operation's answer (`responses/<status>/links`),
    where the app has both of its operations."""
    operations = {
        operation["operationId"]: (path, operation)
        for path, item in paths.items()
        for operation in item.values()
    }
    for link in links() if found is None else found:
        if link.source not in operations or link.target not in operations:
            continue
        _, source = operations[link.source]
        answer = source["responses"].get(str(link.status))
        if answer is None:
            raise ValueError(f"link {link.name}: {link.source} never answers {link.status}")
        target_path, _ = operations[link.target]
        for parameter in link.parameters:
            where, _, name = parameter.partition(".")
            if where == "path" and "{" + name + "}" not in target_path:
                raise ValueError(f"link {link.name}: {target_path} has no {name}")
        rendered: dict[str, Any] = {"operationId": link.target, "description": link.description}
        if link.parameters:
            rendered["parameters"] = dict(link.parameters)
        if link.body is not None:
            rendered["requestBody"] = dict(link.body)
        named = answer.setdefault("links", {})
        if link.name in named:
            raise ValueError(f"link {link.name}: {link.source} {link.status} has it twice")
        named[link.name] = rendered
