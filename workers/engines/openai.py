"""An OpenAI-compatible engine (vLLM, llama.cpp server, LM Studio), through the official
`openai` client, streaming.

Jobs keep Ollama's shape everywhere else (stored input, options, metrics), so this module
translates both ways: Ollama options become OpenAI parameters, and the SSE stream becomes
the same Chunks the Ollama engine yields, with Ollama's metrics measured here (the
protocol reports token counts in `usage`, and no durations). Closing the stream closes the
HTTP response; these servers stop generating when their client goes away.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx2
import openai

from db.fleet import canonical_model_name
from workers.engines.base import (
    Chunk,
    EngineError,
    EngineModel,
    LoadedModel,
    answered_once,
    unit_length,
)

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
# Ollama option -> OpenAI parameter of the same meaning.
STANDARD_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# Sampling options the big OpenAI-compatible servers take beside the standard ones.
EXTRA_OPTIONS = ("top_k", "min_p", "repeat_penalty", "typical_p", "mirostat", "tfs_z")
IMAGE_TYPES = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif"}
# Where the servers that stream no usage count tokens: llama-cpp-python's server, then
# llama.cpp's own server and vLLM (the same path, different bodies and answers).
TOKENIZE_ENDPOINTS = ("/extras/tokenize/count", "/tokenize")
TOKENIZE_TIMEOUT_S = 5.0


class OpenAIEngine:
    kind = "openai"

    def __init__(
        self,
        url: str,
        *,
        stall_timeout_s: float,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        listing_timeout_s: float = 5.0,
        capabilities: Sequence[str] = (),
        http_client: httpx2.Client | None = None,  # tests hand in a scripted transport
    ) -> None:
        self.url = url.rstrip("/")
        self.capabilities = tuple(capabilities)
        base = self.url if self.url.endswith("/v1") else f"{self.url}/v1"
        self.client = openai.OpenAI(
            base_url=base,
            # Local servers take any key; the client refuses to start without one.
            api_key=api_key or "none",
            max_retries=0,  # the job runner retries with its own backoff and accounting
            timeout=httpx2.Timeout(
                connect=connect_timeout_s, read=stall_timeout_s, write=30.0, pool=connect_timeout_s
            ),
            http_client=http_client,
        )
        # Served ids as the server spells them, by our canonical name ("x" -> "x:latest").
        self._served: dict[str, str] = {}
        self._listing: list[EngineModel] = []
        self._streams = 0  # generations in progress through this client
        self._lock = threading.Lock()
        self._usage_in_stream = True  # until the server refuses stream_options
        # llama-cpp-python's server answers /v1/models only between generations (its own
        # lock), whoever runs them: a heartbeat must not wait for one to end.
        self._listing_timeout = httpx2.Timeout(listing_timeout_s, connect=connect_timeout_s)
        # The endpoint that counted last time; "" once the server has answered that it has
        # none (it is not asked again).
        self._tokenize: str | None = None

    def version(self) -> str | None:
        try:  # vLLM and others answer /version; the protocol itself has none
            response = self.client._client.get(self.url.removesuffix("/v1") + "/version")
            version = response.json().get("version") if response.is_success else None
            return version if isinstance(version, str) and version else None
        except (httpx2.HTTPError, ValueError, AttributeError):
            pass
        return None

    def models(self) -> list[EngineModel]:
        with self._lock:
            busy = self._streams > 0
        if busy and self._listing:
            # Some servers (llama.cpp's) answer /v1/models only between generations, and
            # by default abort the running stream for it: while we stream, the list we
            # have is the list.
            return self._listing
        with _faults():
            listing = list(self.client.with_options(timeout=self._listing_timeout).models.list())
        self._served = {canonical_model_name(m.id): m.id for m in listing}
        self._listing = [
            EngineModel(canonical_model_name(m.id), m.model_dump(mode="json")) for m in listing
        ]
        return self._listing

    def describe(self, name: str) -> dict[str, Any] | None:
        # The protocol lists models and says nothing more about them: what they can do is
        # what the operator said (`--capabilities`), or unknown.
        return {"capabilities": list(self.capabilities)} if self.capabilities else None

    def loaded(self) -> set[str]:
        # A server of this kind serves what it lists: every model is loaded.
        return {model.name for model in self.models()}

    def loaded_models(self) -> dict[str, LoadedModel]:
        # Loaded for good, at a size the protocol does not tell.
        return {name: LoadedModel(name) for name in self.loaded()}

    def pull(self, name: str) -> Iterator[dict[str, Any]]:
        raise EngineError(
            "an OpenAI-compatible engine cannot pull models; load it on the server",
            code="engine_unsupported",
            retryable=False,
        )

    def delete(self, name: str) -> None:
        raise EngineError(
            "an OpenAI-compatible engine cannot remove models; unload it on the server",
            code="engine_unsupported",
            retryable=False,
        )

    def _served_id(self, name: str) -> str:
        if name not in self._served:
            self.models()
        return self._served.get(name, name)

    def stream(self, kind: str, body: dict[str, Any]) -> Generator[Chunk, None, None]:
        if kind == "embed":
            return answered_once(lambda: self._embed(body))
        return self._generation(kind, body)

    def _embed(self, body: dict[str, Any]) -> Chunk:
        """/v1/embeddings, answered as Ollama answers /api/embed: vectors of unit length (the
        llama.cpp server sends them unnormalised), cut to `dimensions` here (servers that
        ignore the parameter do), the prompt's tokens from `usage`, the time measured."""
        if body.get("truncate") is False:
            raise EngineError(
                "truncate false cannot be honoured: OpenAI-compatible engines cut long "
                "inputs without saying so (Ollama engines refuse them)",
                code="engine_unsupported",
                retryable=False,
            )
        given = body.get("input", "")
        inputs = [given] if isinstance(given, str) else list(given)
        model = self._served_id(canonical_model_name(body["model"]))
        started = time.perf_counter_ns()
        with _faults():
            answer = self.client.embeddings.create(
                model=model, input=inputs, encoding_format="float"
            )
        dimensions = body.get("dimensions")
        ordered = sorted(answer.data, key=lambda item: item.index)
        vectors = [unit_length(list(item.embedding), dimensions) for item in ordered]
        usage = getattr(answer, "usage", None)
        metrics: dict[str, int | None] = {
            "total_duration": time.perf_counter_ns() - started,
            "prompt_eval_count": getattr(usage, "prompt_tokens", None),
        }
        return Chunk(
            done=True, done_reason="stop", metrics=metrics, message_extras={"embeddings": vectors}
        )

    def _generation(self, kind: str, body: dict[str, Any]) -> Generator[Chunk, None, None]:
        params = request_parameters(kind, body)
        params["model"] = self._served_id(canonical_model_name(body["model"]))
        started = time.perf_counter_ns()
        with self._lock:
            self._streams += 1
        try:
            parts = self._open(kind, params)
            try:
                for chunk in _chunks(parts, started):
                    if chunk.done and chunk.metrics.get("prompt_eval_count") is None:
                        chunk = self._with_prompt_count(chunk, params)
                    yield chunk
            finally:
                parts.close()
        finally:
            with self._lock:
                self._streams -= 1

    def _with_prompt_count(self, chunk: Chunk, params: dict[str, Any]) -> Chunk:
        """The stream said nothing of the prompt's tokens (llama.cpp's servers stream no
        usage even when asked): count them with the server's tokenizer. For chat, the text
        of the messages without the chat template's own tokens, so a few short."""
        count = self.count_tokens(params["model"], _prompt_text(params))
        if count is None:
            return chunk
        return replace(chunk, metrics={**chunk.metrics, "prompt_eval_count": count})

    def count_tokens(self, model: str, text: str) -> int | None:
        """`text`'s tokens by the server's own tokenizer; None if it offers none."""
        if self._tokenize == "":
            return None
        root = self.url.removesuffix("/v1")
        endpoints = [self._tokenize] if self._tokenize else list(TOKENIZE_ENDPOINTS)
        answered = 0
        for endpoint in endpoints:
            body = {"input": text, "content": text, "prompt": text, "model": model}
            try:
                response = self.client._client.post(
                    root + endpoint, json=body, timeout=TOKENIZE_TIMEOUT_S
                )
                answered += 1
                count = _token_count(response.json() if response.is_success else None)
            except (httpx2.HTTPError, ValueError):
                continue
            if count is not None:
                self._tokenize = endpoint
                return count
        if answered == len(endpoints) and self._tokenize is None:
            self._tokenize = ""  # every one answered, none counts: this server has none
        return None

    def _open(self, kind: str, params: dict[str, Any]) -> Any:
        create = (
            self.client.chat.completions.create
            if kind == "chat"
            else self.client.completions.create
        )
        if self._usage_in_stream:
            try:
                with _faults():
                    return create(**params, stream_options={"include_usage": True})
            except EngineError as error:
                refused = error.code in ("engine_400", "engine_422")
                if not refused or "stream_options" not in str(error):
                    raise
                self._usage_in_stream = False  # an older server: count tokens ourselves
        with _faults():
            return create(**params)


def request_parameters(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI request for a job stored in Ollama's shape."""
    params: dict[str, Any] = {"stream": True, **_sampling(body.get("options") or {})}
    if (response_format := _response_format(body.get("format"))) is not None:
        params["response_format"] = response_format
    if kind == "chat":
        params["messages"] = _messages(body["messages"])
        if body.get("tools"):  # the controls mean something only beside tools
            params["tools"] = body["tools"]
            for control in ("tool_choice", "parallel_tool_calls"):
                if body.get(control) is not None:
                    params[control] = body[control]
        return params
    return params | _completion_input(body)


def _sampling(options: dict[str, Any]) -> dict[str, Any]:
    """Ollama's options as OpenAI parameters; the ones OpenAI has no name for ride along in
    `extra_body`, for the servers (vLLM, llama.cpp) that take them."""
    params = {
        theirs: options[ours]
        for ours, theirs in STANDARD_OPTIONS.items()
        if options.get(ours) is not None
    }
    if (num_predict := options.get("num_predict")) is not None and num_predict >= 0:
        params["max_tokens"] = num_predict
    extra = {name: options[name] for name in EXTRA_OPTIONS if options.get(name) is not None}
    if extra:
        params["extra_body"] = extra
    return params


def _completion_input(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("images"):
        raise EngineError(
            "an OpenAI-compatible engine takes images in chat only",
            code="engine_unsupported",
            retryable=False,
        )
    system, prompt = body.get("system"), body.get("prompt", "")
    # The completions endpoint has no system field and applies no template.
    params = {"prompt": f"{system}\n\n{prompt}" if system else prompt}
    if body.get("suffix"):
        params["suffix"] = body["suffix"]
    return params


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    return None


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's messages in OpenAI's shape. Tool calls and the tool messages answering them
    must share ids there; Ollama's tool messages may name only the tool, so an answer
    without an id takes the id of the latest call of that tool."""
    out, call_ids = [], {}
    for message in messages:
        converted = _message(message)
        for call in converted.get("tool_calls", []):
            call_ids[call["function"]["name"]] = call["id"]
        if message["role"] == "tool" and not message.get("tool_call_id"):
            name = message.get("tool_name") or ""
            converted["tool_call_id"] = call_ids.get(name) or name or "call_0"
        out.append(converted)
    return out


def _message(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message["role"]}
    images = message.get("images") or []
    if images:
        out["content"] = [
            {"type": "text", "text": message.get("content", "")},
            *({"type": "image_url", "image_url": {"url": _data_url(i)}} for i in images),
        ]
    else:
        out["content"] = message.get("content", "")
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": call.get("id") or f"call_{index}",
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    "arguments": json.dumps(call["function"].get("arguments") or {}),
                },
            }
            for index, call in enumerate(message["tool_calls"])
        ]
    if message["role"] == "tool" and message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def _prompt_text(params: dict[str, Any]) -> str:
    if "prompt" in params:
        return str(params["prompt"])
    parts = []
    for message in params.get("messages", []):
        content = message.get("content") or ""
        if isinstance(content, list):  # text and images
            content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
        parts.append(str(content))
    return "\n".join(parts)


def _token_count(answer: Any) -> int | None:
    """{"count": n} (llama-cpp-python, vLLM) or {"tokens": [...]} (llama.cpp's server)."""
    if not isinstance(answer, dict):
        return None
    if isinstance(answer.get("count"), int):
        return int(answer["count"])
    if isinstance(answer.get("tokens"), list):
        return len(answer["tokens"])
    return None


def _data_url(image: str) -> str:
    try:
        head = base64.b64decode(image[:16] + "=" * (-len(image[:16]) % 4))
    except (binascii.Error, ValueError):
        head = b""
    mime = next((t for magic, t in IMAGE_TYPES.items() if head.startswith(magic)), "image/png")
    return f"data:{mime};base64,{image}"


def _chunks(parts: Any, started_ns: int) -> Iterator[Chunk]:
    """Text as it comes, then one final Chunk with Ollama's metrics."""
    first_ns: int | None = None
    counted = 0
    finish: str | None = None
    usage: Any = None
    calls: dict[int, dict[str, Any]] = {}
    with _faults():
        for part in parts:
            usage = part.usage or usage
            for choice in part.choices:
                text = _text(choice)
                if text:
                    first_ns = first_ns or time.perf_counter_ns()
                    counted += 1
                    yield Chunk(text=text)
                _collect_tool_calls(calls, choice)
                finish = choice.finish_reason or finish
    if finish is None:
        raise EngineError(
            "the engine ended the stream without a finish reason",
            code="engine_truncated",
            retryable=True,
        )
    ended = time.perf_counter_ns()
    first = first_ns or ended
    extras = {"tool_calls": [_ollama_call(c) for _, c in sorted(calls.items())]} if calls else {}
    yield Chunk(
        done=True,
        # Ollama says "stop" when a model calls tools; "length" is the same word in both.
        done_reason="stop" if finish in ("tool_calls", "function_call") else finish,
        metrics={
            "total_duration": ended - started_ns,
            "load_duration": None,
            "prompt_eval_count": getattr(usage, "prompt_tokens", None),
            "prompt_eval_duration": first - started_ns,
            "eval_count": getattr(usage, "completion_tokens", None) or counted,
            "eval_duration": ended - first,
        },
        message_extras=extras,
    )


def _text(choice: Any) -> str:
    delta = getattr(choice, "delta", None)
    if delta is not None:  # chat
        return str(delta.content or "")
    return str(getattr(choice, "text", "") or "")


def _collect_tool_calls(calls: dict[int, dict[str, Any]], choice: Any) -> None:
    """Streamed tool calls arrive as fragments keyed by index: the arguments as a JSON string
    in pieces, the name whole, once (OpenAI, vLLM) or again in every fragment (llama-cpp-
    python's server): the first name given is the call's, never a concatenation."""
    delta = getattr(choice, "delta", None)
    for fragment in getattr(delta, "tool_calls", None) or []:
        call = calls.setdefault(fragment.index, {"id": None, "name": "", "arguments": ""})
        call["id"] = fragment.id or call["id"]
        if fragment.function is not None:
            call["name"] = call["name"] or fragment.function.name or ""
            call["arguments"] += fragment.function.arguments or ""


def _ollama_call(call: dict[str, Any]) -> dict[str, Any]:
    try:
        arguments = json.loads(call["arguments"] or "{}")
    except json.JSONDecodeError:
        arguments = {"_raw": call["arguments"]}  # keep what the model said, unparsed
    out: dict[str, Any] = {"function": {"name": call["name"], "arguments": arguments}}
    if call["id"]:
        out["id"] = call["id"]
    return out


@contextmanager
def _faults() -> Iterator[None]:
    """Translate the client's exceptions into EngineError."""
    try:
        yield
    except openai.APIStatusError as error:
        status = error.status_code
        raise EngineError(
            _message_of(error), code=f"engine_{status}", retryable=status in RETRYABLE_STATUS
        ) from error
    except openai.APITimeoutError as error:
        if isinstance(error.__cause__, httpx2.ConnectTimeout):  # no connection: not busy
            raise EngineError(
                f"cannot reach the engine: {error.__cause__}",
                code="engine_unreachable",
                retryable=True,
            ) from error
        raise EngineError(
            "the engine stopped sending", code="engine_stalled", retryable=True
        ) from error
    except openai.APIConnectionError as error:
        raise EngineError(
            f"cannot reach the engine: {error.__cause__ or error}",
            code="engine_unreachable",
            retryable=True,
        ) from error
    except openai.APIError as error:  # an error event in the middle of the stream
        raise EngineError(_message_of(error), code="engine_stream_error", retryable=True) from error


def _message_of(error: openai.APIError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(error.message)
