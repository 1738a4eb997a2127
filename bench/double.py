"""The Ollama double, plus the OpenAI-compatible chat route that Ollama itself serves:

    .venv/bin/python -m bench.double --port 11434 --models llama3.2

Ollama answers `POST /v1/chat/completions` next to its native API; the double in tests/
does not (the tests never needed it). The front-door benchmark calls the engine directly
with the official `openai` client, so the benchmarks run this subclass: the native routes
are the double's own, and the added route streams the same tokens with the same knobs
(first-token delay, delay between tokens), framed as Ollama frames its OpenAI chunks.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from tests.ollama_double.behaviour import canonical, tokens_for
from tests.ollama_double.server import ClientGone, OllamaDouble, OllamaHandler


class Handler(OllamaHandler):
    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            super().do_POST()
            return
        body = self._json_body()
        if body is not None:
            self._openai_chat(body)

    def _openai_chat(self, body: dict[str, Any]) -> None:
        state = self.server.state
        requested = str(body.get("model") or "")
        if canonical(requested) not in state.models:
            error = {"message": f"model '{requested}' not found", "type": "api_error"}
            self._reply(404, {"error": error})
            return
        messages = body.get("messages") or []
        prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        tokens = tokens_for(prompt, limit if limit > 0 else state.knobs.default_tokens)
        envelope = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": requested,
            "system_fingerprint": "fp_ollama",
        }

        def chunk(text: str, finish: str | None) -> bytes:
            choice = {"index": 0, "delta": {"role": "assistant", "content": text}}
            choice["finish_reason"] = finish
            return b"data: " + json.dumps({**envelope, "choices": [choice]}).encode() + b"\n\n"

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            time.sleep(state.knobs.first_token_delay_s)
            for index, token in enumerate(tokens):
                if index:
                    time.sleep(state.knobs.token_delay_s)
                self._send(chunk(token, None))
            self._send(chunk("", "length" if limit > 0 else "stop"))
            self._send(b"data: [DONE]\n\n")
        except ClientGone:
            return
        self._end_stream()

    def _send(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as error:
            raise ClientGone from error


class Double(OllamaDouble):
    # Go's listener takes the kernel's backlog (somaxconn); socketserver's default of 5
    # would drop connections at the start of a burst and add a second's SYN retry.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], models: list[str]) -> None:
        super().__init__(address, models)
        self.RequestHandlerClass = Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--models", default="llama3.2:latest", help="comma-separated names")
    args = parser.parse_args()
    server = Double((args.host, args.port), [m for m in args.models.split(",") if m])
    print(f"ollama double (+ /v1/chat/completions) on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
