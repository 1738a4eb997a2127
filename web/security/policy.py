"""The one authorization policy: roles grant permissions, API key scopes narrow them.

admin > operator > user. A request's permissions are its role's; a request made with an
API key gets only the permissions that are both its owner's and its scopes'.
"""

from __future__ import annotations

from enum import StrEnum

from db.models import Role


class Permission(StrEnum):
    PROFILE = "profile"  # own profile, sessions, keys, export, deletion
    INFERENCE_SUBMIT = "inference:submit"
    INFERENCE_READ_OWN = "inference:read_own"
    INFERENCE_READ_ALL = "inference:read_all"
    INFERENCE_CANCEL_ALL = "inference:cancel_all"
    FLEET_READ = "fleet:read"
    FLEET_WRITE = "fleet:write"
    SYSTEM_STATS = "system:stats"
    SYSTEM_CONFIG = "system:config"
    AUDIT_READ = "audit:read"
    USERS_MANAGE = "users:manage"


USER_PERMISSIONS = frozenset(
    {
        Permission.PROFILE,
        Permission.INFERENCE_SUBMIT,
        Permission.INFERENCE_READ_OWN,
        Permission.FLEET_READ,
    }
)
OPERATOR_PERMISSIONS = USER_PERMISSIONS | {
    Permission.INFERENCE_READ_ALL,
    Permission.INFERENCE_CANCEL_ALL,
    Permission.FLEET_WRITE,
    Permission.SYSTEM_STATS,
}
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Role.USER: USER_PERMISSIONS,
    Role.OPERATOR: frozenset(OPERATOR_PERMISSIONS),
    Role.ADMIN: frozenset(Permission),
}


class Scope(StrEnum):
    INFERENCE = "inference"  # submit and follow one's own jobs
    READ = "read"  # read what the owner may read
    ADMIN = "admin"  # everything the owner's role allows


SCOPE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Scope.INFERENCE: frozenset(
        {Permission.INFERENCE_SUBMIT, Permission.INFERENCE_READ_OWN, Permission.FLEET_READ}
    ),
    Scope.READ: frozenset(
        {
            Permission.INFERENCE_READ_OWN,
            Permission.INFERENCE_READ_ALL,
            Permission.FLEET_READ,
            Permission.SYSTEM_STATS,
        }
    ),
    Scope.ADMIN: frozenset(Permission),
}


def permissions_for(role: str, scopes: list[str] | None = None) -> frozenset[Permission]:
    """What `role` may do, narrowed to `scopes` when the caller used an API key."""
    granted = ROLE_PERMISSIONS.get(role, frozenset())
    if scopes is None:
        return granted
    allowed: frozenset[Permission] = frozenset().union(
        *(SCOPE_PERMISSIONS.get(scope, frozenset()) for scope in scopes)
    )
    return granted & allowed
