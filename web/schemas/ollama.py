"""The Ollama API's shapes as OllamaMax's Ollama door serves them (docs/compat.md), for the
OpenAPI document. The door builds its answers as dicts; these say what they hold."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from web.schemas.common import fits_with_its_tag
from web.schemas.inference import ChatRequest, GenerateRequest, ModelName

# A model to pull or remove: as jobs name it, and it must fit the registry with its tag.
ModelReference = Annotated[str, ModelName, AfterValidator(fits_with_its_tag)]
REFUSED = "Refused with a 400 naming the field unless empty, false or 0 (docs/compat.md)."


class OllamaError(BaseModel):
    """`{"error": "<message>"}`: every error of the Ollama door, as Ollama sends it."""

    error: str


class OllamaStreamed(BaseModel):
    stream: bool = Field(
        default=True, description="true: NDJSON chunks then a final one; false: one object."
    )


class OllamaLogprobs(BaseModel):
    logprobs: bool | None = Field(default=None, description=REFUSED)
    top_logprobs: int | None = Field(default=None, description=REFUSED)


class OllamaGenerateBody(GenerateRequest, OllamaStreamed, OllamaLogprobs):
    """Ollama's /api/generate body. An empty prompt is Ollama's load request. `template`,
    `context` and `logprobs` are refused (the workers cannot carry them to the engine); other
    fields Ollama knows and OllamaMax does not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    template: str | None = Field(default=None, description=REFUSED)
    context: list[int] | None = Field(default=None, description=REFUSED)


class OllamaChatBody(ChatRequest, OllamaStreamed, OllamaLogprobs):
    """Ollama's /api/chat body; no messages is Ollama's load request. `logprobs` is refused.
    OpenAI's tool controls are ignored here, as Ollama ignores them."""

    model_config = ConfigDict(extra="ignore")

    tool_choice: SkipJsonSchema[None] = None  # type: ignore[assignment]
    parallel_tool_calls: SkipJsonSchema[None] = None  # type: ignore[assignment]


class OllamaShowBody(BaseModel):
    model: str | None = None
    name: str | None = Field(default=None, description="Older clients' spelling of model.")


class OllamaPullBody(BaseModel):
    """Ollama's /api/pull body: the model is pulled onto every online Ollama node."""

    model_config = ConfigDict(extra="ignore")

    model: ModelReference | None = None
    name: ModelReference | None = Field(default=None, description="Older clients' spelling.")
    insecure: bool | None = Field(
        default=None, description="Ignored: each engine's own registry settings apply."
    )
    stream: bool = Field(
        default=True, description="true: NDJSON progress lines; false: one object at the end."
    )


class OllamaProgress(BaseModel):
    """One line of a pull's progress (stream true), or its end: `{"status": "success"}`."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class OllamaModelBody(BaseModel):
    """A body naming one model (/api/delete)."""

    model_config = ConfigDict(extra="ignore")

    model: ModelReference | None = None
    name: ModelReference | None = Field(default=None, description="Older clients' spelling.")


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
    """What is recorded about the model: the engine's own /api/show fields where its worker
    or an operator recorded them (the model's `parameters.show`), else empty; `capabilities`
    only when recorded, never guessed."""

    modelfile: str
    parameters: str
    template: str
    details: OllamaDetails
    model_info: dict[str, Any]
    capabilities: list[str] | None = None
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


class OllamaEmbedReply(BaseModel):
    """/api/embed's answer: one unit-length vector per input; durations in nanoseconds."""

    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class OllamaLegacyEmbedBody(BaseModel):
    """/api/embeddings (Ollama's older call): one prompt, one vector."""

    model: str = Field(min_length=1)
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class OllamaLegacyEmbedReply(BaseModel):
    embedding: list[float]
