"""The Ollama engine, through the official `ollama` client, streaming.

Closing the stream closes the HTTP response, and Ollama stops generating when its client
goes away, so a cancelled job frees its slot on the engine at once.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import ollama

from db.fleet import canonical_model_name
from workers.engines.base import Chunk, EngineError, EngineModel

METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
# Statuses worth another try: the engine is busy, restarting or briefly broken.
RETRYABLE_STATUS = {500, 502, 503, 504, -1}


class OllamaEngine:
    kind = "ollama"

    def __init__(
        self,
        url: str,
        *,
        stall_timeout_s: float,
        connect_timeout_s: float = 5.0,
        listing_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.client = ollama.Client(
            host=url,
            timeout=httpx.Timeout(
                connect=connect_timeout_s, read=stall_timeout_s, write=30.0, pool=connect_timeout_s
            ),
        )
        # Listings answer at once, or the engine is busy or hung: the heartbeat that asks
        # must not wait as long as a generation may be silent.
        self.listing = ollama.Client(
            host=url, timeout=httpx.Timeout(listing_timeout_s, connect=connect_timeout_s)
        )

    def version(self) -> str | None:
        try:
            response = self.client._client.get("/api/version")  # the client has no version()
            return str(response.json().get("version")) if response.is_success else None
        except httpx.HTTPError:
            return None

    def models(self) -> list[EngineModel]:
        with _faults():
            listing = self.listing.list()
        return [
            EngineModel(canonical_model_name(m.model or ""), m.model_dump(mode="json"))
            for m in listing.models
            if m.model
        ]

    def loaded(self) -> set[str]:
        with _faults():
            running = self.listing.ps().models
        return {canonical_model_name(m.model or "") for m in running if m.model}

    def stream(self, kind: str, body: dict[str, Any]) -> Generator[Chunk, None, None]:
        call = self.client.chat if kind == "chat" else self.client.generate
        with _faults():
            parts = call(**body, stream=True)
        try:
            with _faults():
                for part in parts:
                    if part.done:
                        # Read the stream to its end before handing over the last chunk: a
                        # response closed unread takes its connection with it, and the next
                        # job would pay for a new one.
                        for _ in parts:
                            pass
                    yield _chunk(kind, part)
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()

    def pull(self, name: str) -> Iterator[dict[str, Any]]:
        """Ollama's /api/pull progress: {status, digest?, total?, completed?} per step."""
        with _faults():
            for progress in self.client.pull(name, stream=True):
                yield progress.model_dump(mode="json", exclude_none=True)

    def delete(self, name: str) -> None:
        with _faults():
            self.client.delete(name)


def _chunk(kind: str, part: Any) -> Chunk:
    if kind == "chat":
        message = part.message
        text = message.content or ""
        extras = {}
        if message.tool_calls:
            extras["tool_calls"] = [call.model_dump(mode="json") for call in message.tool_calls]
        if message.thinking:
            extras["thinking"] = message.thinking
    else:
        text, extras = part.response or "", {}
    if not part.done:
        return Chunk(text=text, message_extras=extras)
    metrics = {name: getattr(part, name, None) for name in METRICS}
    return Chunk(
        text=text, done=True, done_reason=part.done_reason, metrics=metrics, message_extras=extras
    )


@contextmanager
def _faults() -> Iterator[None]:
    """Translate the client's and httpx's exceptions into EngineError."""
    try:
        yield
    except ollama.ResponseError as error:
        status = error.status_code
        code = "engine_stream_error" if status == -1 else f"engine_{status}"
        raise EngineError(
            str(error.error), code=code, retryable=status in RETRYABLE_STATUS
        ) from error
    except httpx.TimeoutException as error:
        if isinstance(error, httpx.ConnectTimeout):  # no connection at all: not a busy engine
            raise EngineError(
                f"cannot reach the engine: {error}", code="engine_unreachable", retryable=True
            ) from error
        raise EngineError(
            "the engine stopped sending", code="engine_stalled", retryable=True
        ) from error
    except (httpx.HTTPError, ConnectionError) as error:
        raise EngineError(
            f"cannot reach the engine: {error}", code="engine_unreachable", retryable=True
        ) from error
