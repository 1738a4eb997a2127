"""What every engine client yields, and the faults it raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Chunk:
    """A piece of output, or (done=True) the end with the engine's metrics."""

    text: str = ""
    done: bool = False
    done_reason: str | None = None
    metrics: dict[str, int | None] = field(default_factory=dict)
    # Chat extras the engine returned (tool calls, thinking), kept whole.
    message_extras: dict[str, Any] = field(default_factory=dict)


class EngineError(Exception):
    """A fault talking to the engine. `retryable` faults are tried again with backoff."""

    def __init__(self, message: str, *, code: str, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass(frozen=True)
class EngineModel:
    name: str  # canonical name:tag
    record: dict[str, Any]


@dataclass(frozen=True)
class LoadedModel:
    """A model in the engine's memory now (Ollama's /api/ps): how much GPU memory it takes
    and when it unloads; None where the engine does not say (OpenAI-compatible servers)."""

    name: str  # canonical name:tag
    size_vram: int | None = None
    expires_at: datetime | None = None


class Engine(Protocol):
    kind: str

    def version(self) -> str | None: ...

    def models(self) -> list[EngineModel]: ...

    def loaded(self) -> set[str]: ...

    def loaded_models(self) -> dict[str, LoadedModel]:
        """The models in memory, by canonical name, with their size and expiry."""
        ...

    def describe(self, name: str) -> dict[str, Any] | None:
        """What the engine says about a model (Ollama's /api/show: modelfile, template,
        parameters, capabilities, model_info); None where the protocol has no such call."""
        ...

    def pull(self, name: str) -> Iterator[dict[str, Any]]:
        """Fetch a model onto this engine, yielding progress {status, digest, total, completed}."""
        ...

    def delete(self, name: str) -> None: ...

    def stream(self, kind: str, body: dict[str, Any]) -> Generator[Chunk, None, None]:
        """Start a generation; closing the iterator closes the engine stream. An embedding
        job ("embed") yields one final chunk with the vectors in `message_extras`."""
        ...


def answered_once(answer: Callable[[], Chunk]) -> Generator[Chunk, None, None]:
    """A call with one answer (embeddings) as the stream the job runner reads."""
    yield answer()


def unit_length(vector: list[float], dimensions: int | None = None) -> list[float]:
    """The first `dimensions` values (all by default), scaled to length 1, as Ollama answers
    embeddings (and OpenAI's are)."""
    kept = vector[:dimensions] if dimensions else vector
    norm = math.sqrt(sum(value * value for value in kept))
    return [value / norm for value in kept] if norm else list(kept)
