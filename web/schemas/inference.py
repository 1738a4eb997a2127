"""Schemas for inference requests. Field types follow Ollama's API."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from web.schemas.common import MODEL_NAME_MAX, PageQuery, UtcDateTime, fits_with_its_tag


def _strict_base64(images: list[str] | None) -> list[str] | None:
    """Images are base64 data. (The ollama client would read a file path from the worker's
    disk, so a path must never get through.)"""
    for image in images or []:
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("images must be base64-encoded data") from None
    return images


Images = Annotated[
    list[str] | None, Field(default=None, max_length=16), AfterValidator(_strict_base64)
]
ModelName = Field(
    min_length=1, max_length=MODEL_NAME_MAX, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
)
Format = Literal["json"] | dict[str, Any] | None
KeepAlive = float | str | None


def webhook_field() -> Any:
    """The optional webhook URL of a submission. Checked by the service (a 400 saying why,
    as for the X-OllamaMax-Webhook header), not here: a schema error would be a 422."""
    return Field(
        default=None,
        description="POST the job, signed (Standard Webhooks), when it ends: http(s), at "
        "most 2048 characters, no credentials, no internal address (docs/webhooks.md). "
        "Default: the X-OllamaMax-Webhook header, else the API key's webhook_url.",
        json_schema_extra={"maxLength": 2048},
    )


class SubmitBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = ModelName
    options: dict[str, Any] | None = None
    format: Format = None
    keep_alive: KeepAlive = None
    think: bool | Literal["low", "medium", "high"] | None = None
    priority: int | None = Field(
        default=None, ge=0, le=9, description="9 runs first; default: the system's default."
    )
    webhook_url: str | None = webhook_field()

    _model_fits = field_validator("model")(fits_with_its_tag)


class GenerateRequest(SubmitBase):
    prompt: str = Field(max_length=1_000_000)
    system: str | None = None
    images: Images = None
    suffix: str | None = None
    raw: bool | None = None


class EmbedRequest(BaseModel):
    """An embedding job: Ollama's /api/embed body (one vector per input string)."""

    model_config = ConfigDict(extra="forbid")

    model: str = ModelName
    input: (
        Annotated[str, Field(max_length=1_000_000)]
        | Annotated[list[Annotated[str, Field(max_length=1_000_000)]], Field(max_length=2048)]
    ) = Field(description="A string or a list of strings (at most 2048).")
    truncate: bool | None = Field(
        default=None, description="Cut inputs longer than the context (the default); false: 400."
    )
    dimensions: int | None = Field(
        default=None, ge=1, le=65536, description="Keep the first N dimensions, renormalised."
    )
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    priority: int | None = Field(
        default=None, ge=0, le=9, description="9 runs first; default: the system's default."
    )
    webhook_url: str | None = webhook_field()

    _model_fits = field_validator("model")(fits_with_its_tag)


class ToolFunction(BaseModel):
    name: str
    arguments: dict[str, Any]


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    function: ToolFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: Images = None
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)


class NamedToolChoice(BaseModel):
    """OpenAI's `{"type": "function", "function": {"name": ...}}`: call this tool."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
TOOL_CHOICE = (
    "Which tool the model calls (OpenAI's tool_choice): none (no call; Ollama engines are "
    "offered no tools), auto (the model decides), required (at least one call) or one named "
    "function, among `tools`. Ollama engines cannot force a call: a required or named choice "
    "fails the job there, and the OpenAI door refuses it with a 400 while an Ollama node "
    "serves the model (docs/compat.md)."
)
PARALLEL_TOOL_CALLS = (
    "false: at most one tool call per answer (OpenAI's parallel_tool_calls). Ollama engines "
    "keep the answer's first call."
)


class ChatRequest(SubmitBase):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = Field(default=None, description=TOOL_CHOICE)
    parallel_tool_calls: bool | None = Field(default=None, description=PARALLEL_TOOL_CALLS)

    @model_validator(mode="after")
    def _tools_are_functions(self) -> ChatRequest:
        for tool in self.tools or []:
            if tool.get("type") != "function" or "function" not in tool:
                raise ValueError('each tool is {"type": "function", "function": {...}}')
        return self

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, choice: ToolChoice | None, info: ValidationInfo) -> Any:
        """A call can be forced only among the tools offered (OpenAI refuses the same)."""
        if choice is None or choice in ("none", "auto"):
            return choice
        tools = info.data.get("tools") or []
        if not tools:
            raise ValueError("a required or named tool_choice needs tools")
        if isinstance(choice, NamedToolChoice):
            names = {(t.get("function") or {}).get("name") for t in tools if isinstance(t, dict)}
            if choice.function.name not in names:
                raise ValueError(f"tool_choice names {choice.function.name!r}, not among tools")
        return choice


class Links(BaseModel):
    self: str
    ws: str


class Submitted(BaseModel):
    id: uuid.UUID
    status: str
    links: Links


class RequestRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID | None
    model: str = Field(validation_alias="model_name")
    kind: str
    source: str
    priority: int
    status: str
    attempt: int
    node_id: uuid.UUID | None
    worker: str | None = Field(validation_alias="worker_name")
    output: str | None
    output_message: dict[str, Any] | None
    done_reason: str | None
    prompt_eval_count: int | None
    eval_count: int | None
    total_duration: int | None
    load_duration: int | None
    prompt_eval_duration: int | None
    eval_duration: int | None
    error: str | None
    error_code: str | None
    queued_at: datetime
    started_at: datetime | None
    first_token_at: datetime | None
    completed_at: datetime | None
    webhook_url: str | None = Field(description="Where its end is POSTed (docs/webhooks.md).")


class RequestDetail(RequestRead):
    """One request, with where to find it and where to follow it."""

    links: Links


class CancelAccepted(BaseModel):
    id: uuid.UUID
    status: Literal["cancelled", "cancelling"] = Field(
        description="cancelled: it was queued; cancelling: its worker stops it within a second."
    )


class RequestListQuery(PageQuery):
    status: Literal["queued", "running", "completed", "failed", "cancelled"] | None = None
    model: str | None = Field(default=None, max_length=255)
    since: UtcDateTime | None = Field(default=None, description="Inclusive; UTC if no offset.")
    until: UtcDateTime | None = Field(default=None, description="Exclusive; UTC if no offset.")
