"""The error contract as schemas: what every 4xx body looks like (see web/errors.py).

These describe answers for the OpenAPI document; web/errors.py builds them. The fuzz test
(tests/web/test_openapi_fuzz.py) checks every error the app gives against them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorInfo(BaseModel):
    code: str = Field(
        description="Stable snake_case reason (e.g. not_found, validation_error); branch on it."
    )
    message: str = Field(description="For humans; may change.")
    details: Any = Field(default=None, description="Extra facts about this error, or null.")


class ErrorResponse(BaseModel):
    """`{"error": {"code", "message", "details"}}`: the body of every error answer."""

    error: ErrorInfo


class FieldError(BaseModel):
    field: str = Field(description='Where, e.g. "body.messages.0.role" or "query.page".')
    message: str
    type: str = Field(description="pydantic's error type, or a policy's name.")


class ValidationErrorInfo(ErrorInfo):
    code: str = Field(description="validation_error")
    details: list[FieldError]


class ValidationErrorResponse(BaseModel):
    """422: every problem of the body or query string at once."""

    error: ValidationErrorInfo
