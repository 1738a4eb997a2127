"""The double's HTTP side: Ollama's framing, status codes and wording, over a real socket.

NDJSON lines go out one chunk each with TCP_NODELAY (as Ollama's Go server does), so
latency measured against the double is not Nagle's 40 ms. A write that fails means the
client hung up: generation stops there and the prompt is recorded in `disconnects`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.ollama_double.behaviour import (
    CONTEXT_WORDS,
    State,
    canonical,
    embedding_for,
    keep_alive_seconds,
    model_record,
    rfc3339,
    tokens_for,
)

VERSION = "0.13.0"
BUSY = "server busy, please try again.  maximum pending requests exceeded"  # sic: two spaces


class ClientGone(Exception):
    pass


FAULT_REPLIES = {
    "503": (503, {"error": "server busy, please try again.  maximum pending requests exceeded"}),
    "500": (500, {"error": "model runner has unexpectedly stopped"}),
}
PULL_MISSING = "pull model manifest: file does not exist"
MIDSTREAM_ERROR = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error"
)


@dataclass(frozen=True)
class _Answer:
    """One generation as the double will send it."""

    requested: str
    chat: bool
    prompt: str
    tokens: list[str]
    done_reason: str
    calls: list[dict[str, Any]]
    started: int
    load_ns: int  # spent loading the model (or waiting for its load) first

    def chunk(self, text: str, done: bool) -> dict[str, Any]:
        base: dict[str, Any] = {"model": self.requested, "created_at": rfc3339()}
        if self.chat:
            base["message"] = {"role": "assistant", "content": text}
        else:
            base["response"] = text
        base["done"] = done
        return base


def _unloads(body: dict[str, Any]) -> bool:
    """keep_alive 0 (a number or a duration of zero): unload once answered."""
    try:
        return "keep_alive" in body and keep_alive_seconds(body["keep_alive"]) == 0
    except ValueError:
        return False


class OllamaHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: OllamaDouble

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read /_double/stats instead

    # --- plumbing ---------------------------------------------------------------------

    def _json_body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            self._reply(400, {"error": "missing request body"})
            return None
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as error:
            self._reply(400, {"error": f"invalid character: {error.msg}"})
            return None
        return body if isinstance(body, dict) else {}

    def _reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = (
            body.encode()
            if isinstance(body, str)
            else json.dumps(body, separators=(",", ":")).encode()
        )
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _line(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as error:
            raise ClientGone from error

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    # --- routes -----------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/":
            self._reply(200, "Ollama is running", "text/plain")
        elif self.path == "/api/version":
            self._reply(200, {"version": VERSION})
        elif self.path == "/api/tags":
            self._reply(200, {"models": list(state.models.values())})
        elif self.path == "/api/ps":
            self._reply(200, {"models": self._loaded()})
        elif self.path == "/_double/stats":
            self._reply(200, state.stats())
        else:
            self._reply(404, "404 page not found", "text/plain")

    def do_DELETE(self) -> None:
        body = self._json_body()
        if body is None:
            return
        name = canonical(str(body.get("model") or body.get("name") or ""))
        if self.server.state.models.pop(name, None) is None:
            self._reply(404, {"error": f"model '{body.get('model')}' not found"})
        else:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def do_POST(self) -> None:
        routes = {
            "/api/generate": self._generate,
            "/api/chat": self._chat,
            "/api/show": self._show,
            "/api/pull": self._pull,
            "/api/embed": self._embed,
            "/_double/config": self._configure,
        }
        handler = routes.get(self.path)
        if handler is None:
            self._reply(404, "404 page not found", "text/plain")
            return
        body = self._json_body()
        if body is not None:
            handler(body)

    def _configure(self, body: dict[str, Any]) -> None:
        try:
            self.server.state.configure(body)
        except ValueError as error:
            self._reply(400, {"error": str(error)})
            return
        self._reply(200, {"ok": True})

    def _embed(self, body: dict[str, Any]) -> None:
        """/api/embed as Ollama answers it: unit-length vectors, 400 for a bad input type or
        (truncate false) an input over the context; long inputs are cut otherwise."""
        state = self.server.state
        requested = str(body.get("model") or "")
        if canonical(requested) not in state.models:
            self._reply(404, {"error": f'model "{requested}" not found, try pulling it first'})
            return
        given = body.get("input", "")
        if isinstance(given, str):
            inputs = [given] if given else []
        elif isinstance(given, list) and all(isinstance(item, str) for item in given):
            inputs = given
        else:
            self._reply(400, {"error": "invalid input type"})
            return
        words = [text.split() for text in inputs]
        if body.get("truncate") is False and any(len(w) > CONTEXT_WORDS for w in words):
            self._reply(400, {"error": "the input length exceeds the context length"})
            return
        fault = state.take_fault()
        if fault in ("500", "503"):
            self._reply(int(fault), {"error": f"injected fault {fault}"})
            return
        started = time.monotonic_ns()
        load_ns = state.load(canonical(requested), body.get("keep_alive"))
        kept = [" ".join(w[:CONTEXT_WORDS]) for w in words]
        vectors = [embedding_for(text, body.get("dimensions")) for text in kept]
        if _unloads(body):
            state.unload(canonical(requested))
        reply: dict[str, Any] = {"model": requested, "embeddings": vectors}
        if vectors:
            reply["total_duration"] = max(1, time.monotonic_ns() - started)
            reply["load_duration"] = load_ns
            reply["prompt_eval_count"] = sum(max(1, min(len(w), CONTEXT_WORDS)) for w in words)
        self._reply(200, reply)

    def _loaded(self) -> list[dict[str, Any]]:
        """/api/ps: what is in memory now, until when, and how much of the GPU it takes."""
        state = self.server.state
        size = state.knobs.size_vram
        return [
            {
                **state.models[name],
                "size": size,
                "expires_at": rfc3339(until),
                "size_vram": size,
                "context_length": 4096,
            }
            for name, until in sorted(state.loaded_now().items())
        ]

    def _show(self, body: dict[str, Any]) -> None:
        name = str(body.get("model") or body.get("name") or "")
        record = self.server.state.models.get(canonical(name)) if name else None
        if not name:
            self._reply(400, {"error": "model is required"})
        elif record is None:
            self._reply(404, {"error": f"model '{name}' not found"})
        else:
            self._reply(
                200,
                {
                    "modelfile": f"FROM {name}\n",
                    "parameters": "",
                    "template": "",
                    "details": record["details"],
                    "model_info": {},
                    "capabilities": ["completion"],
                    "modified_at": record["modified_at"],
                },
            )

    def _pull(self, body: dict[str, Any]) -> None:
        name = canonical(str(body.get("model") or body.get("name") or ""))
        if name in map(canonical, self.server.state.knobs.missing_from_registry):
            self._pull_missing(body)
            return
        record = model_record(name)
        total = 4 * 1024 * 1024
        steps = [{"status": "pulling manifest"}]
        for done in (0, total // 2, total):
            step: dict[str, Any] = {
                "status": f"pulling {record['digest'][:12]}",
                "digest": f"sha256:{record['digest']}",
                "total": total,
            }
            if done:
                step["completed"] = done
            steps.append(step)
        steps += [
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        self.server.state.models[name] = record
        if body.get("stream") is False:
            self._reply(200, steps[-1])
            return
        self._start_stream()
        try:
            for step in steps:
                self._line(step)
                time.sleep(self.server.state.knobs.token_delay_s)
        except ClientGone:
            return
        self._end_stream()

    def _pull_missing(self, body: dict[str, Any]) -> None:
        """Ollama fetching a manifest the registry does not have: a 500 when not streamed,
        else the first step, then a last error line."""
        if body.get("stream") is False:
            self._reply(500, {"error": PULL_MISSING})
            return
        self._start_stream()
        try:
            self._line({"status": "pulling manifest"})
            self._line({"error": PULL_MISSING})
        except ClientGone:
            return
        self._end_stream()

    def _generate(self, body: dict[str, Any]) -> None:
        self._inference(body, prompt=str(body.get("prompt") or ""), chat=False)

    def _chat(self, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        self._inference(body, prompt=prompt, chat=True)

    # --- inference --------------------------------------------------------------------

    def _inference(self, body: dict[str, Any], *, prompt: str, chat: bool) -> None:
        state = self.server.state
        requested = str(body.get("model") or "")
        name = canonical(requested) if requested else ""
        if not requested and chat:
            self._reply(400, {"error": "model is required"})
            return
        if name not in state.models:
            self._reply(404, {"error": f"model '{requested}' not found"})
            return
        if (chat and not body.get("messages")) or (
            not chat and not prompt and not body.get("images")
        ):
            self._load_or_unload(body, requested, name, chat)
            return
        fault = state.take_fault()
        if fault in FAULT_REPLIES:
            self._reply(*FAULT_REPLIES[fault])
            return
        started = time.monotonic_ns()
        try:
            load_ns = state.load(name, body.get("keep_alive"))
        except ValueError as error:
            self._reply(400, {"error": str(error)})
            return
        limit = int((body.get("options") or {}).get("num_predict") or 0)
        answer = _Answer(
            requested=requested,
            chat=chat,
            prompt=prompt,
            tokens=state.knobs.tokens
            or tokens_for(prompt, limit if limit > 0 else state.knobs.default_tokens),
            done_reason="length" if limit > 0 else "stop",
            calls=self._tool_calls(body) if chat else [],
            started=started,
            load_ns=load_ns,
        )
        try:
            if body.get("stream") is False:
                self._whole(answer)
            else:
                self._stream(answer, fault)
        finally:
            if _unloads(body):  # keep_alive 0: unloaded once it has answered
                state.unload(name)

    def _load_or_unload(self, body: dict[str, Any], requested: str, name: str, chat: bool) -> None:
        """Load (or, with keep_alive 0, unload) the model: one object even when streaming."""
        state = self.server.state
        unload = _unloads(body)
        reply = {"model": requested, "created_at": rfc3339()}
        reply.update(
            {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
        )
        reply.update({"done": True, "done_reason": "unload" if unload else "load"})
        if unload:
            state.unload(name)
        else:
            try:
                state.load(name, body.get("keep_alive"))
            except ValueError as error:
                self._reply(400, {"error": str(error)})
                return
        self._reply(200, reply)

    def _whole(self, answer: _Answer) -> None:
        state = self.server.state
        count = len(answer.tokens)
        time.sleep(state.knobs.first_token_delay_s + state.knobs.token_delay_s * count)
        final = answer.chunk("".join(answer.tokens), True)
        if answer.calls:
            final["message"]["tool_calls"] = answer.calls
        final.update(self._metrics(answer, count))
        self._reply(200, final)
        with state.lock:
            state.completed.append(answer.prompt)

    def _stream(self, answer: _Answer, fault: str | None) -> None:
        state = self.server.state
        self._start_stream()
        try:
            time.sleep(state.knobs.first_token_delay_s)
            eval_started = time.monotonic_ns()
            for index, token in enumerate(answer.tokens):
                if (
                    fault in ("midstream_error", "stall")
                    and index == state.knobs.fault_after_tokens
                ):
                    if fault == "stall":
                        time.sleep(state.knobs.stall_s)
                    self._line({"error": MIDSTREAM_ERROR})
                    self._end_stream()
                    return
                if index:
                    time.sleep(state.knobs.token_delay_s)
                self._line(answer.chunk(token, False))
            if answer.calls:  # whole, in one chunk of its own, before the final one
                call_chunk = answer.chunk("", False)
                call_chunk["message"]["tool_calls"] = answer.calls
                self._line(call_chunk)
            final = answer.chunk("", True)
            count = len(answer.tokens)
            final.update(self._metrics(answer, count, eval_started))
            self._line(final)
        except ClientGone:
            with state.lock:
                state.disconnects.append(answer.prompt)
            return
        self._end_stream()
        with state.lock:
            state.completed.append(answer.prompt)

    def _tool_calls(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        arguments = self.server.state.knobs.tool_arguments
        tools = body.get("tools") or []
        if arguments is None or not tools:
            return []
        name = tools[0].get("function", {}).get("name", "")
        call_id = "call_" + hashlib.sha256(name.encode()).hexdigest()[:8]
        return [{"id": call_id, "function": {"index": 0, "name": name, "arguments": arguments}}]

    def _metrics(
        self, answer: _Answer, count: int, eval_started: int | None = None
    ) -> dict[str, Any]:
        now = time.monotonic_ns()
        loaded_at = answer.started + answer.load_ns
        eval_started = eval_started or loaded_at
        return {
            "done_reason": answer.done_reason,
            "total_duration": now - answer.started,
            "load_duration": answer.load_ns,
            "prompt_eval_count": max(1, len(answer.prompt.split())),
            "prompt_eval_duration": max(1, eval_started - loaded_at),
            "eval_count": count,
            "eval_duration": max(1, now - eval_started),
            **(self.server.state.knobs.final_fields or {}),
        }


class OllamaDouble(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], models: list[str]) -> None:
        super().__init__(address, OllamaHandler)
        self.state = State()
        self.state.configure({"models": models})

    @contextmanager
    def serving(self) -> Iterator[OllamaDouble]:
        """Serve from a background thread for the block (a test's in-process double)."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        try:
            yield self
        finally:
            self.shutdown()
