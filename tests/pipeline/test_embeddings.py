"""Embeddings through every door (issue 15 item 5), with the official clients unchanged: each
call is a persisted, queued embedding job (kind `embed`) run by a real worker against the
Ollama double, and the vectors that come back are the engine's, compared with the double
called directly in the same test."""

from __future__ import annotations

import math
from collections.abc import Callable

import ollama
import openai
import pytest
import requests
from flask.testing import FlaskClient

from db.base import utcnow
from db.models import UserTokenUsage
from db.session import Database
from tests.conftest import LiveServer
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Double, Worker
from tests.pipeline.jobs import finished

pytestmark = pytest.mark.usefixtures("fresh_double")
TEXTS = ["the sky is blue", "sunsets glow red", "a third sentence"]


@pytest.fixture(scope="module", autouse=True)
def worker(double: Double, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(double.url, name="embed@test", slots=2)


@pytest.fixture
def key(api: FlaskClient, user_headers: dict[str, str]) -> str:
    created = api.post(
        "/api/v1/users/api-keys",
        json={"name": "embed", "scopes": ["inference"], "current_password": TEST_PASSWORD},
        headers=user_headers,
    )
    return str(created.get_json()["key"])


@pytest.fixture
def direct(double: Double) -> ollama.Client:
    return ollama.Client(host=double.url)


def _close(got: list[list[float]], want: list[list[float]]) -> bool:
    return len(got) == len(want) and all(
        len(g) == len(w)
        and all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True)
    )


def _jobs(api: FlaskClient, headers: dict[str, str]) -> list[dict]:
    return api.get("/api/v1/inference/requests", headers=headers).get_json()["items"]


def test_ollama_embed_is_a_tracked_job_with_the_engines_vectors(
    live_server: LiveServer,
    key: str,
    direct: ollama.Client,
    api: FlaskClient,
    user_headers: dict[str, str],
    committed: Database,
) -> None:
    client = ollama.Client(host=live_server.url, headers={"Authorization": f"Bearer {key}"})

    answer = client.embed(model="llama3.2", input=TEXTS)

    assert _close(answer.embeddings, direct.embed(model="llama3.2", input=TEXTS).embeddings)
    assert answer.prompt_eval_count == sum(len(t.split()) for t in TEXTS)
    assert (answer.total_duration or 0) > 0
    (job,) = _jobs(api, user_headers)
    assert (job["kind"], job["source"], job["status"]) == ("embed", "ollama", "completed")
    assert _close(job["output_message"]["embeddings"], answer.embeddings)
    with committed.unit_of_work() as session:
        usage = session.get(UserTokenUsage, (job["user_id"], utcnow().date()))
        assert usage is not None
        assert usage.tokens == answer.prompt_eval_count  # the daily token quota counts it

    cut = client.embed(model="llama3.2", input="the sky is blue", dimensions=4)
    assert _close(
        cut.embeddings,
        direct.embed(model="llama3.2", input="the sky is blue", dimensions=4).embeddings,
    )
    assert client.embed(model="llama3.2", input=[]).embeddings == []  # no job, as Ollama


def test_ollamas_older_embeddings_call_answers_one_vector(
    live_server: LiveServer, key: str, direct: ollama.Client
) -> None:
    client = ollama.Client(host=live_server.url, headers={"Authorization": f"Bearer {key}"})
    answer = client.embeddings(model="llama3.2", prompt="the sky is blue")
    want = direct.embed(model="llama3.2", input=["the sky is blue"]).embeddings
    assert _close([list(answer.embedding)], want)
    assert client.embeddings(model="llama3.2", prompt="").embedding == []


def test_a_failed_embedding_job_is_an_ollama_error(live_server: LiveServer, key: str) -> None:
    client = ollama.Client(host=live_server.url, headers={"Authorization": f"Bearer {key}"})
    with pytest.raises(ollama.ResponseError) as raised:
        client.embed(model="llama3.2", input=" ".join(["word"] * 600), truncate=False)
    assert "exceeds the context length" in str(raised.value.error)
    with pytest.raises(ollama.ResponseError) as unknown:
        client.embed(model="no-such-model", input="x")
    assert unknown.value.status_code == 404


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_openai_embeddings_with_the_official_client(
    live_server: LiveServer,
    key: str,
    direct: ollama.Client,
    encoding: str | None,
    api: FlaskClient,
    user_headers: dict[str, str],
) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0)
    extra = {"encoding_format": encoding} if encoding else {}

    answer = client.embeddings.create(model="llama3.2", input=TEXTS, **extra)  # type: ignore[arg-type]

    want = direct.embed(model="llama3.2", input=TEXTS).embeddings
    got = [item.embedding for item in answer.data]
    if encoding == "base64":  # asked for explicitly, the client hands the string back
        import base64
        import struct

        got = [
            list(struct.unpack(f"<{len(want[0])}f", base64.b64decode(text)))  # type: ignore[arg-type]
            for text in got
        ]
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert _close(got, want)  # float32 on the wire for base64: within its precision
    assert answer.usage.prompt_tokens == sum(len(t.split()) for t in TEXTS)
    assert answer.model == "llama3.2"
    assert [(j["kind"], j["source"]) for j in _jobs(api, user_headers)] == [("embed", "openai")]


def test_openai_embeddings_refuse_token_arrays_and_empty_input(
    live_server: LiveServer, key: str
) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0)
    for bad in ([[1, 2, 3]], [], ""):
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(model="llama3.2", input=bad)  # type: ignore[arg-type]
        assert refused.value.body["param"] == "input"  # type: ignore[index]


def test_the_native_api_takes_embedding_jobs(
    api: FlaskClient, user_headers: dict[str, str], live_server: LiveServer, direct: ollama.Client
) -> None:
    submitted = api.post(
        "/api/v1/inference/embed",
        json={"model": "llama3.2", "input": ["the sky is blue"], "priority": 3},
        headers=user_headers,
    )
    assert submitted.status_code == 202, submitted.get_json()
    job = finished(api, user_headers, submitted.get_json()["id"])
    assert job["status"] == "completed"
    assert _close(
        job["output_message"]["embeddings"],
        direct.embed(model="llama3.2", input=["the sky is blue"]).embeddings,
    )
    bad = requests.post(
        f"{live_server.url}/api/v1/inference/embed",
        json={"model": "llama3.2", "input": [1, 2]},
        headers=user_headers,
        timeout=10,
    )
    assert bad.status_code == 422
