"""The OpenAI API's request and response shapes, as far as OllamaMax serves them.

Requests ignore parameters we do not act on (logit_bias, user, ...) the way Ollama's own
OpenAI layer does, so existing client code runs unchanged; the ones we cannot honour in a way
the caller would notice (n > 1, best_of > 1, logprobs, a tool_choice of a shape we do not
know) are refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from web.schemas.common import fits_with_its_tag
from web.schemas.inference import PARALLEL_TOOL_CALLS, TOOL_CHOICE, ModelName, ToolChoice

Stop = str | list[str] | None


class OpenAIStreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class OpenAIResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class OpenAISampling(BaseModel):
    """Parameters both endpoints take, and our own `priority` (send it in `extra_body`)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ModelName
    stream: bool = False

    _model_fits = field_validator("model")(fits_with_its_tag)
    stream_options: OpenAIStreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: Stop = Field(default=None)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: Literal[1] | None = Field(default=None, description="Only 1 is served.")
    priority: int | None = Field(default=None, ge=0, le=9, description="OllamaMax: 9 runs first.")


class OpenAIImageURL(BaseModel):
    url: str


class OpenAIContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: OpenAIImageURL | None = None


class OpenAIFunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="JSON text, as OpenAI sends it.")


class OpenAIToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: Literal["function"] = "function"
    function: OpenAIFunctionCall


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[OpenAIContentPart] | None = None
    name: str | None = None
    tool_calls: list[OpenAIToolCall] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(OpenAISampling):
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: OpenAIResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = Field(default=None, description=TOOL_CHOICE)
    parallel_tool_calls: bool | None = Field(default=None, description=PARALLEL_TOOL_CALLS)
    logprobs: Literal[False] | None = Field(default=None, description="Not served.")


class CompletionRequest(OpenAISampling):
    prompt: str | list[str] = Field(description="One prompt (a list of exactly one string).")
    suffix: str | None = None
    echo: bool = False
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    best_of: Literal[1] | None = Field(default=None, description="Only 1 is served.")
    logprobs: None = Field(default=None, description="Not served.")


# Responses (documented in the OpenAPI document; built as dicts on the hot path).


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAIAssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[OpenAIToolCall] | None = None


class OpenAIChatChoice(BaseModel):
    index: int
    message: OpenAIAssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str = Field(description="chatcmpl-<hex of the OllamaMax request id>")
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[OpenAIChatChoice]
    usage: OpenAIUsage


class OpenAICompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str = Field(description="cmpl-<hex of the OllamaMax request id>")
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[OpenAICompletionChoice]
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModel]


class OpenAIErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorObject


class EmbeddingsRequest(BaseModel):
    """/v1/embeddings: text in, one vector per input. Token arrays are refused (the fleet's
    engines tokenize themselves)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ModelName
    input: str | list[str] = Field(
        description="A string or a list of strings (at most 2048; not empty)."
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: little-endian float32, as OpenAI sends it."
    )
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: str | None = None
    priority: int | None = Field(
        default=None, ge=0, le=9, description="OllamaMax's queue priority."
    )

    _model_fits = field_validator("model")(fits_with_its_tag)

    @field_validator("input", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        """OpenAI's token arrays (lists of ints) get a message saying so, not a type error."""
        if isinstance(value, list) and any(isinstance(item, int | list) for item in value):
            raise ValueError("token arrays are not supported; send the text")
        if value in ("", []):
            raise ValueError("input must not be empty")
        if isinstance(value, list) and len(value) > 2048:
            raise ValueError("at most 2048 inputs")
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 (encoding_format).")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage
