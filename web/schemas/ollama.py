"""The Ollama API's shapes as OllamaMax's Ollama door serves them (docs/compat.md), for the
OpenAPI document. The door builds its answers as dicts; these say what they hold."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from web.schemas.inference import ChatRequest, GenerateRequest


class OllamaError(BaseModel):
    """`{"error": "<message>"}`: every error of the Ollama door, as Ollama sends it."""

    error: str


class OllamaStreamed(BaseModel):
    stream: bool = Field(
        default=True, description="true: NDJSON chunks then a final one; false: one object."
    )


class OllamaGenerateBody(GenerateRequest, OllamaStreamed):
    """Ollama's /api/generate body; fields Ollama knows and OllamaMax does not use are ignored.
    An empty prompt is Ollama's load request."""

    model_config = ConfigDict(extra="ignore")


class OllamaChatBody(ChatRequest, OllamaStreamed):
    """Ollama's /api/chat body; no messages is Ollama's load request."""

    model_config = ConfigDict(extra="ignore")


class OllamaShowBody(BaseModel):
    model: str | None = None
    name: str | None = Field(default=None, description="Older clients' spelling of model.")


class OllamaDetails(BaseModel):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class OllamaTag(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaDetails


class OllamaTags(BaseModel):
    models: list[OllamaTag]


class OllamaRunning(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: OllamaDetails
    expires_at: str
    size_vram: int


class OllamaRunningModels(BaseModel):
    models: list[OllamaRunning]


class OllamaShown(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: OllamaDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class OllamaVersion(BaseModel):
    version: str


class OllamaMessage(BaseModel):
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None


class OllamaChunk(BaseModel):
    """One NDJSON line, or the whole answer with stream false. The final chunk has done true,
    done_reason and the metrics Ollama reports (left out when zero)."""

    model: str
    created_at: str
    response: str | None = Field(default=None, description="generate")
    message: OllamaMessage | None = Field(default=None, description="chat")
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
