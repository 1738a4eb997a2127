"""The Ollama engine's transport (workers/engines/transport.py): the official client reads
the same answers over urllib3 as over httpx's own transport, keeps one connection per
stream, hangs up on a stream it leaves, and reports every fault as httpx's transport did."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import ollama
import pytest

from tests.ollama_double.server import OllamaDouble
from workers.engines.base import EngineError
from workers.engines.ollama import OllamaEngine
from workers.engines.transport import Urllib3Transport, environment_proxy

MODEL = "llama3.2:latest"
ACCEPTED: list[int] = []  # one per connection the double accepted


@pytest.fixture(scope="module")
def server() -> Iterator[OllamaDouble]:
    double = OllamaDouble(("127.0.0.1", 0), [MODEL])
    accept = double.get_request

    def counted() -> tuple[socket.socket, object]:
        ACCEPTED.append(1)
        return accept()

    double.get_request = counted  # type: ignore[method-assign]
    with double.serving():
        yield double


@pytest.fixture
def base(server: OllamaDouble) -> str:
    server.state.configure(
        {
            "fault": None,
            "token_delay_s": 0.0,
            "default_tokens": 8,
            "tool_arguments": None,
            "stall_s": 30.0,
        }
    )
    return f"http://127.0.0.1:{server.server_address[1]}"


def _read(engine: OllamaEngine, kind: str, body: dict[str, object]) -> list[tuple[str, bool]]:
    return [(chunk.text, chunk.done) for chunk in engine.stream(kind, {"model": MODEL, **body})]


def _read_into(got: list[str], engine: OllamaEngine, body: dict[str, object]) -> None:
    """A generation's text into `got`, chunk by chunk, until it ends or fails."""
    for chunk in engine.stream("generate", {"model": MODEL, **body}):
        got.append(chunk.text)


def _wait_for_hang_up(server: OllamaDouble, prompt: str) -> None:
    """Up to 5 s for the double to notice that the client of `prompt` hung up (it notices
    on its next write)."""
    for _ in range(100):
        if prompt in server.state.stats()["disconnects"]:
            return
        time.sleep(0.05)


def test_answers_read_the_same_as_through_httpxs_own_transport(base: str) -> None:
    engine = OllamaEngine(base, stall_timeout_s=5)
    official = ollama.Client(host=base)
    said = [{"role": "user", "content": "the same either way"}]

    chat = list(engine.stream("chat", {"model": MODEL, "messages": said}))
    expected = list(official.chat(model=MODEL, messages=said, stream=True))
    assert [c.text for c in chat] == [p.message.content for p in expected]
    assert chat[-1].done
    assert chat[-1].done_reason == expected[-1].done_reason == "stop"
    assert chat[-1].metrics["eval_count"] == expected[-1].eval_count

    generated = "".join(text for text, _ in _read(engine, "generate", {"prompt": "once more"}))
    assert generated == official.generate(model=MODEL, prompt="once more").response
    assert engine.version() == "0.13.0"
    [vectors] = engine.stream("embed", {"model": MODEL, "input": ["a cat"]})
    assert vectors.message_extras["embeddings"] == official.embed(MODEL, ["a cat"]).embeddings


def test_streams_one_after_another_share_one_connection(base: str) -> None:
    engine = OllamaEngine(base, stall_timeout_s=5)
    assert isinstance(engine.client._client._transport, Urllib3Transport)
    before = len(ACCEPTED)
    for n in range(3):
        assert _read(engine, "generate", {"prompt": f"job {n}"})[-1][1] is True
    assert len(ACCEPTED) - before == 1


def test_a_stream_left_early_hangs_up_on_the_engine_and_its_connection_is_not_reused(
    server: OllamaDouble, base: str
) -> None:
    server.state.configure({"token_delay_s": 0.05, "default_tokens": 100})
    engine = OllamaEngine(base, stall_timeout_s=5)
    before = len(ACCEPTED)
    stream = engine.stream("generate", {"model": MODEL, "prompt": "leave early"})
    next(stream)
    stream.close()
    _wait_for_hang_up(server, "leave early")
    assert "leave early" in server.state.stats()["disconnects"]

    server.state.configure({"token_delay_s": 0.0, "default_tokens": 3})
    after = "".join(text for text, _ in _read(engine, "generate", {"prompt": "after"}))
    assert after == ollama.Client(host=base).generate(model=MODEL, prompt="after").response
    assert len(ACCEPTED) - before == 3  # the unread one was closed, not pooled


def test_a_response_closed_while_its_reader_lives_hangs_up_at_once(
    server: OllamaDouble, base: str
) -> None:
    """The close itself hangs up: here nothing finalises the reader (which would also close
    the socket), as when a job's runner leaves its stream for a cancel."""
    server.state.configure({"token_delay_s": 0.05, "default_tokens": 100})
    client = httpx.Client(base_url=base, transport=Urllib3Transport(pool_size=2))
    body = {"model": MODEL, "prompt": "closed, reader kept", "stream": True}
    with client.stream("POST", "/api/generate", json=body) as response:
        reader = response.iter_raw()
        next(reader)
    _wait_for_hang_up(server, "closed, reader kept")
    assert "closed, reader kept" in server.state.stats()["disconnects"]
    assert reader is not None  # alive until here


def test_a_silent_stream_is_a_stall(server: OllamaDouble, base: str) -> None:
    server.state.configure({"fault": "stall", "fault_after_tokens": 2, "stall_s": 3.0})
    engine = OllamaEngine(base, stall_timeout_s=0.3)
    got: list[str] = []
    with pytest.raises(EngineError) as raised:
        _read_into(got, engine, {"prompt": "go quiet"})
    assert (raised.value.code, raised.value.retryable) == ("engine_stalled", True)
    assert len(got) == 2


def test_an_engine_error_before_and_during_the_stream_keeps_its_status(
    server: OllamaDouble, base: str
) -> None:
    engine = OllamaEngine(base, stall_timeout_s=5)
    server.state.configure({"fault": "503"})
    with pytest.raises(EngineError) as before:
        _read(engine, "generate", {"prompt": "busy"})
    assert (before.value.code, before.value.retryable) == ("engine_503", True)

    server.state.configure({"fault": "midstream_error", "fault_after_tokens": 2})
    with pytest.raises(EngineError) as during:
        _read(engine, "generate", {"prompt": "broken"})
    assert (during.value.code, during.value.retryable) == ("engine_stream_error", True)


def test_an_engine_that_does_not_listen_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    engine = OllamaEngine(f"http://127.0.0.1:{port}", stall_timeout_s=5)
    with pytest.raises(EngineError) as raised:
        _read(engine, "generate", {"prompt": "anyone?"})
    assert (raised.value.code, raised.value.retryable) == ("engine_unreachable", True)
    assert engine.version() is None


def test_a_stream_cut_short_is_a_fault_worth_another_try() -> None:
    """An engine that dies mid-answer: the body ends without its last chunk."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_then_die() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            line = b'{"model":"llama3.2:latest","response":"half","done":false}\n'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(line), line)
            )

    thread = threading.Thread(target=answer_then_die, daemon=True)
    thread.start()
    engine = OllamaEngine(f"http://127.0.0.1:{listener.getsockname()[1]}", stall_timeout_s=5)
    got: list[str] = []
    with pytest.raises(EngineError) as raised:
        _read_into(got, engine, {"prompt": "die"})
    thread.join(5)
    listener.close()
    assert got == ["half"]
    assert (raised.value.code, raised.value.retryable) == ("engine_unreachable", True)


def _one_connection_server(
    serve: Callable[[socket.socket], None], receive_buffer: int | None = None
) -> tuple[str, threading.Thread, socket.socket]:
    """A server for one connection, answered by `serve`; its receive buffer fixed (and
    small) when `receive_buffer` is given, so that a client's send has to wait for it."""
    listener = socket.socket()
    if receive_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def accept_once() -> None:
        conn, _ = listener.accept()
        with conn:
            serve(conn)

    thread = threading.Thread(target=accept_once, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread, listener


def test_a_request_body_the_engine_stops_taking_is_a_stall() -> None:
    """An engine that takes the connection and then reads nothing: the body's send times out
    as a write (a stall, tried again), not as a lost connection (an engine down)."""
    gone = threading.Event()
    base, thread, listener = _one_connection_server(lambda conn: gone.wait(10), 64 * 1024)
    engine = OllamaEngine(base, stall_timeout_s=5, connect_timeout_s=0.5)
    try:
        with pytest.raises(EngineError) as raised:
            _read(engine, "generate", {"prompt": "x" * (32 * 1024 * 1024)})
    finally:
        gone.set()
        thread.join(5)
        listener.close()
    assert (raised.value.code, raised.value.retryable) == ("engine_stalled", True)


def test_a_large_body_an_engine_reads_slowly_goes_out_whole() -> None:
    """Each block of the body has the timeout, not the whole body: 12 MiB taken at about
    6 MB/s, well past the half-second timeout in all, reaches the engine whole."""
    received: list[int] = []

    def read_slowly_then_answer(conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        head, body = head.split(b"\r\n\r\n", 1)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        size = len(body)
        while size < length:
            size += len(conn.recv(64 * 1024))
            time.sleep(0.01)
        received.append(size)
        answer = json.dumps({"model": MODEL, "response": "ok", "done": True}).encode() + b"\n"
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
        )

    base, thread, listener = _one_connection_server(read_slowly_then_answer, 64 * 1024)
    engine = OllamaEngine(base, stall_timeout_s=5, connect_timeout_s=0.5)
    prompt = "x" * (12 * 1024 * 1024)
    try:
        got = _read(engine, "generate", {"prompt": prompt})
    finally:
        thread.join(10)
        listener.close()
    assert got == [("ok", True)]
    assert received[0] > len(prompt)


def test_an_engine_behind_an_environment_proxy_keeps_httpxs_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx applies HTTP_PROXY and NO_PROXY only with its own transport."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    url = "http://127.0.0.1:11434"
    assert not environment_proxy(url)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    assert environment_proxy(url)
    proxied = OllamaEngine(url, stall_timeout_s=5)
    assert not isinstance(proxied.client._client._transport, Urllib3Transport)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert not environment_proxy(url)
    assert isinstance(
        OllamaEngine(url, stall_timeout_s=5).client._client._transport, Urllib3Transport
    )
