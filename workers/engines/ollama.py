"""The Ollama engine, through the official `ollama` client, streaming.

Closing the stream closes the HTTP response, and Ollama stops generating when its client
goes away, so a cancelled job frees its slot on the engine at once.

Ollama has no tool_choice or parallel_tool_calls (OpenAI's, which jobs may carry): "none"
offers no tools, "auto" is what Ollama does anyway, a forced call (required, or a named
function) cannot be had and fails the job (the OpenAI door refuses it before that), and
parallel_tool_calls false keeps the answer's first call.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
import ollama
from pydantic import ConfigDict

from db.fleet import canonical_model_name
from workers.engines.base import Chunk, EngineError, EngineModel, LoadedModel, answered_once
from workers.engines.transport import Urllib3Transport, environment_proxy

METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
EMBED_METRICS = ("total_duration", "load_duration", "prompt_eval_count")
# Statuses worth another try: the engine is busy, restarting or briefly broken.
RETRYABLE_STATUS = {500, 502, 503, 504, -1}


class _CalledFunction(ollama.Message.ToolCall.Function):
    model_config = ConfigDict(extra="allow")  # Ollama's `index`


class _ToolCall(ollama.Message.ToolCall):
    model_config = ConfigDict(extra="allow")  # Ollama's `id`

    function: _CalledFunction


class _Message(ollama.Message):
    tool_calls: Sequence[_ToolCall] | None = None


class _ChatResponse(ollama.ChatResponse):
    message: _Message


class _Client(ollama.Client):
    """The official client, reading chat answers with the tool calls' `id` and `index`,
    which Ollama sends (from about v0.13) and its models (0.6.x) drop: a call keeps the id
    its engine gave it."""

    def _request(self, cls: Any, *args: Any, **kwargs: Any) -> Any:
        return super()._request(
            _ChatResponse if cls is ollama.ChatResponse else cls, *args, **kwargs
        )


class OllamaEngine:
    kind = "ollama"

    def __init__(
        self,
        url: str,
        *,
        stall_timeout_s: float,
        connect_timeout_s: float = 5.0,
        listing_timeout_s: float = 5.0,
        connections: int = 20,
    ) -> None:
        self.url = url
        # Generations (and pulls) read their streams through urllib3: a fifth less CPU per
        # streamed job than httpx's own transport (workers/engines/transport.py). A
        # connection kept per slot.
        self.client = _Client(
            host=url,
            timeout=httpx.Timeout(
                connect=connect_timeout_s, read=stall_timeout_s, write=30.0, pool=connect_timeout_s
            ),
            transport=None if environment_proxy(url) else Urllib3Transport(pool_size=connections),
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

    def describe(self, name: str) -> dict[str, Any] | None:
        with _faults():
            shown = self.listing.show(name)
        described = shown.model_dump(mode="json", by_alias=True, exclude_none=True)
        described.pop("modified_at", None)  # the registry keeps its own
        return described

    def loaded(self) -> set[str]:
        return set(self.loaded_models())

    def loaded_models(self) -> dict[str, LoadedModel]:
        with _faults():
            running = self.listing.ps().models
        return {
            name: LoadedModel(name, m.size_vram, m.expires_at)
            for m in running
            if m.model and (name := canonical_model_name(m.model))
        }

    def stream(self, kind: str, body: dict[str, Any]) -> Generator[Chunk, None, None]:
        if kind == "embed":
            return answered_once(lambda: self._embed(body))
        return self._generation(kind, body)

    def _embed(self, body: dict[str, Any]) -> Chunk:
        """Ollama's /api/embed: one vector per input, already unit length."""
        with _faults():
            answer = self.client.embed(
                model=body["model"],
                input=body.get("input", ""),
                truncate=body.get("truncate"),
                options=body.get("options"),
                keep_alive=body.get("keep_alive"),
                dimensions=body.get("dimensions"),
            )
        metrics = {name: getattr(answer, name, None) for name in EMBED_METRICS}
        vectors = [list(vector) for vector in answer.embeddings]
        return Chunk(
            done=True, done_reason="stop", metrics=metrics, message_extras={"embeddings": vectors}
        )

    def _generation(self, kind: str, body: dict[str, Any]) -> Generator[Chunk, None, None]:
        call = self.client.chat if kind == "chat" else self.client.generate
        body, calls_left = _tool_controls(body)
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
                    chunk = _chunk(kind, part)
                    if calls_left is not None and "tool_calls" in chunk.message_extras:
                        chunk, calls_left = _first_calls(chunk, calls_left)
                    yield chunk
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


def _tool_controls(body: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The body without OpenAI's tool controls, which Ollama does not take, applied as far
    as Ollama can: and how many tool calls the answer may keep (None: all of them)."""
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    body = {k: v for k, v in body.items() if k not in ("tool_choice", "parallel_tool_calls")}
    if choice == "none":
        body.pop("tools", None)
    elif choice not in (None, "auto"):
        forced = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
        raise EngineError(
            f"tool_choice {f'function {forced}' if forced else choice} cannot be honoured: "
            "Ollama has no tool_choice and cannot force a tool call (OpenAI-compatible "
            "engines can)",
            code="engine_unsupported",
            retryable=False,
        )
    return body, 1 if parallel is False and body.get("tools") else None


def _first_calls(chunk: Chunk, left: int) -> tuple[Chunk, int]:
    """At most `left` more tool calls: the first ones the model made."""
    calls = chunk.message_extras["tool_calls"][:left]
    extras = {k: v for k, v in chunk.message_extras.items() if k != "tool_calls"}
    if calls:
        extras["tool_calls"] = calls
    return replace(chunk, message_extras=extras), left - len(calls)


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
