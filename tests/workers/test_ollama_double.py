"""The Ollama double, checked with the official `ollama` client: if the client accepts it,
our engine code tested against it will accept a real Ollama."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from tests.ollama_double.behaviour import embedding_for, tokens_for
from tests.ollama_double.server import OllamaDouble


@pytest.fixture(scope="module")
def server() -> Iterator[OllamaDouble]:
    double = OllamaDouble(("127.0.0.1", 0), ["llama3.2", "qwen3:8b"])
    with double.serving():
        yield double


@pytest.fixture
def client(server: OllamaDouble) -> ollama.Client:
    server.state.configure(
        {"fault": None, "token_delay_s": 0.0, "default_tokens": 8, "load_delay_s": 0.0}
    )
    return ollama.Client(host=f"http://127.0.0.1:{server.server_address[1]}")


def test_listing_loaded_models_and_show(client: ollama.Client) -> None:
    assert [m.model for m in client.list().models] == ["llama3.2:latest", "qwen3:8b"]
    assert client.ps().models == []
    client.generate(model="llama3.2", prompt="warm up")
    assert [m.model for m in client.ps().models] == ["llama3.2:latest"]
    assert client.show("llama3.2").details.family == "llama"  # type: ignore[union-attr]


def test_generate_streams_deterministic_tokens_and_final_metrics(client: ollama.Client) -> None:
    parts = list(client.generate(model="llama3.2", prompt="why", stream=True))
    assert "".join(p.response for p in parts) == "".join(tokens_for("why", 8))
    final = parts[-1]
    assert (final.done, final.done_reason, final.eval_count) == (True, "stop", 8)
    assert min(final.total_duration or 0, final.eval_duration or 0) > 0
    assert (final.prompt_eval_count or 0) > 0
    assert all(not p.done for p in parts[:-1])


def test_chat_not_streamed_with_num_predict(client: ollama.Client) -> None:
    reply = client.chat(
        model="qwen3:8b", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3}
    )
    assert reply.message.role == "assistant"
    assert reply.message.content == "".join(tokens_for("hi", 3))
    assert reply.done_reason == "length"


def test_unknown_model_is_404_with_ollamas_wording(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="nope", prompt="x")
    assert (raised.value.status_code, raised.value.error) == (404, "model 'nope' not found")


def test_midstream_error_is_a_response_error_with_status_minus_one(
    client: ollama.Client, server: OllamaDouble
) -> None:
    server.state.configure({"fault": "midstream_error", "fault_count": 1})
    with pytest.raises(ollama.ResponseError) as raised:
        list(client.generate(model="llama3.2", prompt="x", stream=True))
    assert raised.value.status_code == -1


@pytest.mark.parametrize(("fault", "status"), [("503", 503), ("500", 500)])
def test_errors_before_output_have_a_real_status(
    client: ollama.Client, server: OllamaDouble, fault: str, status: int
) -> None:
    server.state.configure({"fault": fault, "fault_count": 1})
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="llama3.2", prompt="x")
    assert raised.value.status_code == status


def test_pull_progress_then_the_model_is_listed(client: ollama.Client) -> None:
    statuses = [p.status for p in client.pull("mistral", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    assert "mistral:latest" in [m.model for m in client.list().models]


def test_load_and_unload_answers(client: ollama.Client) -> None:
    assert client.generate(model="llama3.2", prompt="").done_reason == "load"
    assert client.generate(model="llama3.2", prompt="", keep_alive=0).done_reason == "unload"


def test_plain_routes(server: OllamaDouble) -> None:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    assert httpx.get(base).text == "Ollama is running"
    assert httpx.get(f"{base}/api/version").json() == {"version": "0.13.0"}
    missing = httpx.get(f"{base}/nope")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert httpx.post(f"{base}/api/generate").json() == {"error": "missing request body"}


def test_a_client_that_hangs_up_is_noticed(client: ollama.Client, server: OllamaDouble) -> None:
    server.state.configure({"token_delay_s": 0.05, "default_tokens": 100})
    stream = client.generate(model="llama3.2", prompt="hang up early", stream=True)
    next(stream)
    stream.close()
    pause = threading.Event()
    for _ in range(100):  # the server notices on its next write
        if "hang up early" in server.state.stats()["disconnects"]:
            break
        pause.wait(0.05)
    assert "hang up early" in server.state.stats()["disconnects"]


def test_embed_answers_unit_vectors_as_ollama_does(client: ollama.Client) -> None:
    answer = client.embed(model="llama3.2", input=["a cat", "a mat"])
    assert answer.embeddings == [embedding_for("a cat"), embedding_for("a mat")]
    assert all(abs(sum(v * v for v in vector) - 1) < 1e-9 for vector in answer.embeddings)
    assert (answer.prompt_eval_count or 0) == 4
    assert client.embed(model="llama3.2", input="").embeddings == []
    cut = client.embed(model="llama3.2", input="a cat", dimensions=4).embeddings[0]
    assert len(cut) == 4
    assert abs(sum(v * v for v in cut) - 1) < 1e-9


def test_embed_refuses_an_input_over_the_context_when_told_not_to_truncate(
    client: ollama.Client,
) -> None:
    long = " ".join(["word"] * 600)
    assert len(client.embed(model="llama3.2", input=long).embeddings[0]) == 16
    with pytest.raises(ollama.ResponseError) as raised:
        client.embed(model="llama3.2", input=long, truncate=False)
    assert raised.value.status_code == 400
    assert "exceeds the context length" in str(raised.value.error)


def test_a_cold_model_loads_once_reports_it_and_stays_until_keep_alive(
    client: ollama.Client, server: OllamaDouble
) -> None:
    """The first request for a model not in memory sleeps the load delay and says so in
    load_duration; the next finds it loaded; /api/ps tells what is in memory, its size and
    when it goes; keep_alive 0 unloads it after the answer."""
    server.state.configure({"loaded": [], "load_delay_s": 0.3, "size_vram": 123456})
    loads_before = len(server.state.loads)
    cold = client.generate(model="qwen3:8b", prompt="first", keep_alive="10m")
    assert (cold.load_duration or 0) >= 300_000_000
    [shown] = client.ps().models
    assert (shown.model, shown.size_vram) == ("qwen3:8b", 123456)
    assert shown.expires_at is not None
    warm = client.generate(model="qwen3:8b", prompt="second")
    assert (warm.load_duration or 0) < 300_000_000
    assert server.state.loads[loads_before:] == ["qwen3:8b"]  # loaded once
    client.generate(model="qwen3:8b", prompt="last", keep_alive=0)
    assert client.ps().models == []


def test_a_model_unloads_when_its_keep_alive_runs_out(
    client: ollama.Client, server: OllamaDouble
) -> None:
    server.state.configure({"loaded": []})
    client.generate(model="llama3.2", prompt="brief", keep_alive="200ms")
    assert [m.model for m in client.ps().models] == ["llama3.2:latest"]
    deadline = time.monotonic() + 5
    while client.ps().models and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.ps().models == []


def test_loaded_models_and_the_load_delay_are_knobs(server: OllamaDouble) -> None:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    answer = httpx.post(f"{base}/_double/config", json={"loaded": ["llama3.2"], "load_delay_s": 0})
    assert answer.status_code == 200
    assert [m["model"] for m in httpx.get(f"{base}/api/ps").json()["models"]] == ["llama3.2:latest"]
    bad = httpx.post(
        f"{base}/api/generate", json={"model": "qwen3:8b", "prompt": "x", "keep_alive": "soon"}
    )
    assert bad.status_code == 400
