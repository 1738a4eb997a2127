"""Schemas for accounts, logins, sessions and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from db.models import Role
from db.users import normalise_email
from web.schemas.common import PageQuery
from web.security.passwords import password_problems
from web.security.policy import Scope

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$"


def _check_password(password: str, username: str | None) -> str:
    problems = password_problems(password, username=username)
    if problems:
        raise ValueError("password " + "; ".join(problems))
    return password


class UserCreate(BaseModel):
    """A new account. The schema has no role: a `role` (or any other extra field) in the
    body is dropped, so every registration makes a plain user; roles are granted by admins."""

    model_config = ConfigDict(extra="ignore")  # no stripping: spaces in passwords count

    username: str = Field(pattern=USERNAME_PATTERN)
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, repr=False)

    _normalise = field_validator("email", mode="after")(normalise_email)

    @model_validator(mode="after")
    def _password_meets_policy(self) -> Self:
        _check_password(self.password, self.username)
        return self


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=320, description="Username or email.")
    password: str = Field(min_length=1, max_length=1024, repr=False)


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "Bearer"  # noqa: S105
    expires_in: int


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    username: str
    email: str
    role: Role
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None
    fair_share_weight: float | None = Field(
        default=None,
        description="Its share of a contended model against other accounts' (docs/pipeline.md, "
        "Fair share); null: the run-time default, fair_share_default_weight.",
    )


class ProfileUpdate(BaseModel):
    """Changing the email or the password needs the current password."""

    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, repr=False)
    email: EmailStr | None = Field(default=None, max_length=320)
    new_password: str | None = Field(default=None, repr=False)

    _normalise = field_validator("email", mode="after")(normalise_email)

    @model_validator(mode="after")
    def _something_changes(self) -> Self:
        if self.email is None and self.new_password is None:
            raise ValueError("give email or new_password")
        return self


class AccountDelete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=1, repr=False)


class SessionRead(BaseModel):
    id: uuid.UUID = Field(description="The session family: stable across token refreshes.")
    created_at: datetime
    expires_at: datetime
    ip_address: str | None
    user_agent: str | None
    current: bool


class QuotaValues(BaseModel):
    """An account's own quotas (web/inference/quotas.py): a number, 0 for no limit, or null
    (or absent) for the run-time default."""

    model_config = ConfigDict(extra="forbid", strict=True)  # 5, not "5" or true

    max_queued_jobs: int | None = Field(default=None, ge=0, le=1_000_000)
    max_running_jobs: int | None = Field(default=None, ge=0, le=10_000)
    tokens_per_day: int | None = Field(default=None, ge=0, le=10**15)
    max_websockets: int | None = Field(default=None, ge=0, le=100_000)

    def stored(self) -> dict[str, int]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


class ApiKeyLimits(BaseModel):
    """Limits of one key, never wider than its owner's: each applies on top of the
    account's (a job needs room under both). Absent: the account's alone."""

    model_config = ConfigDict(extra="forbid", strict=True)  # 5, not "5" or true

    max_priority: int | None = Field(default=None, ge=0, le=9)
    max_queued_jobs: int | None = Field(default=None, ge=1, le=1_000_000)
    max_running_jobs: int | None = Field(default=None, ge=1, le=10_000)
    tokens_per_day: int | None = Field(default=None, ge=1, le=10**15)
    max_websockets: int | None = Field(default=None, ge=1, le=100_000)

    def stored(self) -> dict[str, int]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


class Limits(BaseModel):
    """Quotas in force; null: no limit."""

    max_queued_jobs: int | None
    max_running_jobs: int | None
    tokens_per_day: int | None
    max_websockets: int | None


class UsageNow(BaseModel):
    queued_jobs: int
    running_jobs: int
    tokens_today: int = Field(description="Prompt + completion tokens of jobs ended today (UTC).")
    jobs_today: int
    websockets: int


class UsageRead(BaseModel):
    """An account's quotas and what it uses of them now."""

    user_id: uuid.UUID
    day: str = Field(description="Today, UTC (the daily token quota's day).")
    limits: Limits
    own_quotas: dict[str, int] = Field(
        description="What an admin set for this account; other quotas take the default."
    )
    usage: UsageNow


class ApiKeyCreate(BaseModel):
    """A key outlives the login that made it, so making one needs the password."""

    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, repr=False)
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    limits: ApiKeyLimits | None = None
    webhook_url: str | None = Field(
        default=None,
        description="The webhook of the key's jobs that name none (docs/webhooks.md); "
        "checked like a job's (400).",
        json_schema_extra={"maxLength": 2048},
    )

    @field_validator("scopes")
    @classmethod
    def _unique(cls, scopes: list[Scope]) -> list[Scope]:
        return sorted(set(scopes))


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    limits: dict[str, int] = Field(description="The key's own limits (ApiKeyLimits).")
    webhook_url: str | None = Field(
        default=None, description="The default webhook of the key's jobs."
    )


class ApiKeyUpdate(BaseModel):
    """What may change on a live key: its default webhook (null removes it)."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(
        description="null: none.", json_schema_extra={"maxLength": 2048}
    )


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The secret. It is shown once and cannot be recovered.")


class AccountExport(BaseModel):
    """Everything held about the caller (secrets and their hashes left out)."""

    exported_at: datetime
    account: dict[str, Any]
    sessions: list[dict[str, Any]]
    api_keys: list[dict[str, Any]]
    inference_requests: list[dict[str, Any]]
    audit_log: list[dict[str, Any]]


class UserAdminUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    is_active: bool | None = None
    unlock: bool | None = Field(default=None, description="Clear a login lockout.")
    fair_share_weight: float | None = Field(
        default=None,
        ge=0.1,
        le=100,
        description="Fair-share weight, 0.1 to 100 (2: twice the starts of a weight-1 "
        "account when both wait); null: back to the run-time default.",
    )

    @model_validator(mode="after")
    def _something_changes(self) -> Self:
        changes = self.role is not None or self.is_active is not None or self.unlock
        if not changes and "fair_share_weight" not in self.model_fields_set:
            raise ValueError("give role, is_active, unlock or fair_share_weight")
        return self


class UserListQuery(PageQuery):
    role: Role | None = None
    active: bool | None = None
    q: str | None = Field(default=None, max_length=100, description="Part of a username or email.")


def check_new_password(password: str, username: str) -> str:
    return _check_password(password, username)
