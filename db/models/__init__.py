"""Every table's model, imported here so `Base.metadata` is complete for Alembic."""

from db.models.fleet import (
    EngineKind,
    Model,
    ModelReplica,
    ModelStatus,
    Node,
    NodeStatus,
    ReplicaStatus,
)
from db.models.inference import (
    TERMINAL_STATUSES,
    ApiKeyTokenUsage,
    InferenceRequest,
    ModelUsageStats,
    RequestKind,
    RequestStatus,
    UserTokenUsage,
)
from db.models.system import AuditLogEntry, SystemConfig
from db.models.users import ApiKey, Role, User, UserSession
from db.models.webhooks import DeliveryState, WebhookAttempt, WebhookDelivery, WebhookSecret

__all__ = [
    "TERMINAL_STATUSES",
    "ApiKey",
    "ApiKeyTokenUsage",
    "AuditLogEntry",
    "DeliveryState",
    "EngineKind",
    "InferenceRequest",
    "Model",
    "ModelReplica",
    "ModelStatus",
    "ModelUsageStats",
    "Node",
    "NodeStatus",
    "ReplicaStatus",
    "RequestKind",
    "RequestStatus",
    "Role",
    "SystemConfig",
    "User",
    "UserSession",
    "UserTokenUsage",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookSecret",
]
