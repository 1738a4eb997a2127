"""The authorization policy as data: every role's and every scope's permissions spelt out, so
that a permission added to or dropped from a table (a one-line slip, and a privilege bug)
fails here by name. tests/web/identity/ checks the same policy through the routes."""

from __future__ import annotations

import pytest

from db.models import Role
from web.security.policy import (
    ROLE_PERMISSIONS,
    SCOPE_PERMISSIONS,
    Permission,
    Scope,
    permissions_for,
)

P = Permission
USER = {P.PROFILE, P.INFERENCE_SUBMIT, P.INFERENCE_READ_OWN, P.FLEET_READ}
OPERATOR = USER | {P.INFERENCE_READ_ALL, P.INFERENCE_CANCEL_ALL, P.FLEET_WRITE, P.SYSTEM_STATS}
EVERYTHING = OPERATOR | {P.SYSTEM_CONFIG, P.AUDIT_READ, P.USERS_MANAGE}


def test_the_permissions_and_scopes_are_the_documented_names() -> None:
    # Scopes are what API keys are created with; permissions name what a route requires.
    assert {permission.value for permission in Permission} == {
        "profile",
        "inference:submit",
        "inference:read_own",
        "inference:read_all",
        "inference:cancel_all",
        "fleet:read",
        "fleet:write",
        "system:stats",
        "system:config",
        "audit:read",
        "users:manage",
    }
    assert set(Permission) == EVERYTHING
    assert {scope.value for scope in Scope} == {"inference", "read", "admin"}


def test_each_role_has_exactly_its_permissions() -> None:
    assert dict(ROLE_PERMISSIONS) == {
        Role.USER: USER,
        Role.OPERATOR: OPERATOR,
        Role.ADMIN: EVERYTHING,
    }
    assert permissions_for(Role.USER) == USER
    assert permissions_for(Role.OPERATOR) == OPERATOR
    assert permissions_for(Role.ADMIN) == EVERYTHING
    assert all(isinstance(granted, frozenset) for granted in ROLE_PERMISSIONS.values())


def test_each_scope_allows_exactly_its_permissions() -> None:
    assert dict(SCOPE_PERMISSIONS) == {
        Scope.INFERENCE: {P.INFERENCE_SUBMIT, P.INFERENCE_READ_OWN, P.FLEET_READ},
        Scope.READ: {P.INFERENCE_READ_OWN, P.INFERENCE_READ_ALL, P.FLEET_READ, P.SYSTEM_STATS},
        Scope.ADMIN: EVERYTHING,
    }


def test_an_unknown_role_may_do_nothing() -> None:
    assert permissions_for("superuser") == frozenset()
    assert permissions_for("superuser", ["admin"]) == frozenset()


@pytest.mark.parametrize(
    ("role", "scopes", "expected"),
    [
        # A key never exceeds its owner's role...
        (Role.USER, ["admin"], USER),
        (Role.USER, ["read"], {P.INFERENCE_READ_OWN, P.FLEET_READ}),
        (Role.USER, ["inference"], {P.INFERENCE_SUBMIT, P.INFERENCE_READ_OWN, P.FLEET_READ}),
        # ...nor its scopes.
        (
            Role.OPERATOR,
            ["read"],
            {P.INFERENCE_READ_OWN, P.INFERENCE_READ_ALL, P.FLEET_READ, P.SYSTEM_STATS},
        ),
        (Role.ADMIN, ["inference"], {P.INFERENCE_SUBMIT, P.INFERENCE_READ_OWN, P.FLEET_READ}),
        (Role.ADMIN, ["admin"], EVERYTHING),
        # Scopes add up; unknown ones and none at all allow nothing.
        (
            Role.USER,
            ["inference", "read"],
            {P.INFERENCE_SUBMIT, P.INFERENCE_READ_OWN, P.FLEET_READ},
        ),
        (
            Role.OPERATOR,
            ["read", "inference"],
            {P.INFERENCE_SUBMIT, P.INFERENCE_READ_OWN, P.INFERENCE_READ_ALL}
            | {P.FLEET_READ, P.SYSTEM_STATS},
        ),
        (Role.ADMIN, ["everything"], set()),
        (
            Role.ADMIN,
            ["read", "everything"],
            {P.INFERENCE_READ_OWN, P.INFERENCE_READ_ALL} | {P.FLEET_READ, P.SYSTEM_STATS},
        ),
        (Role.ADMIN, [], set()),
    ],
)
def test_a_key_gets_what_both_its_owner_and_its_scopes_allow(
    role: Role, scopes: list[str], expected: set[Permission]
) -> None:
    granted = permissions_for(role, scopes)
    assert granted == expected
    assert isinstance(granted, frozenset)


def test_a_jwt_is_not_narrowed() -> None:
    """None means no API key: the role's permissions, not the empty set of no scopes."""
    assert permissions_for(Role.OPERATOR, None) == OPERATOR
    assert permissions_for(Role.OPERATOR, []) == frozenset()
