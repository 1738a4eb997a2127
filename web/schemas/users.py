"""Schemas for accounts."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from web.security.passwords import password_problems

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$"


class UserCreate(BaseModel):
    """A new account. There is no role field: roles are granted, never requested."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    username: str = Field(pattern=USERNAME_PATTERN)
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, repr=False)

    @model_validator(mode="after")
    def _password_meets_policy(self) -> Self:
        problems = password_problems(self.password, username=self.username)
        if problems:
            raise ValueError("password " + "; ".join(problems))
        return self
