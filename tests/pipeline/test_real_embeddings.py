"""Embeddings on a real model end to end (issue 15 item 5): llama.cpp's server on
all-MiniLM-L6-v2 (`python -m workers.llama_server --embedding`), a worker with the `openai`
engine in front of it, and the official `ollama` and `openai` clients through our doors. The
vectors must be the model's: unit length, 384 dimensions, and closer for sentences that mean
the same than for unrelated ones."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import ollama
import openai
import pytest
from flask.testing import FlaskClient

from tests.conftest import LiveServer
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Worker
from tests.support.llama import LlamaServer, llama_server
from workers.llama_server import EMBEDDING_ALIAS

SAME = ("A cat sits on the mat.", "A kitten is resting on the rug.")
OTHER = "Quarterly tax returns are due at the end of April."


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    folder = tmp_path_factory.mktemp("embedding")
    with llama_server(folder, "--embedding", "--threads", "2") as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def worker(engine: LlamaServer, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(engine.url, name="minilm@test", slots=1, env={"ENGINE_KIND": "openai"})


@pytest.fixture
def key(api: FlaskClient, user_headers: dict[str, str]) -> str:
    created = api.post(
        "/api/v1/users/api-keys",
        json={"name": "real-embed", "scopes": ["inference"], "current_password": TEST_PASSWORD},
        headers=user_headers,
    )
    return str(created.get_json()["key"])


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # both unit length


def test_ollamas_client_gets_the_models_vectors(
    key: str, live_server: LiveServer, api: FlaskClient, user_headers: dict[str, str]
) -> None:
    client = ollama.Client(host=live_server.url, headers={"Authorization": f"Bearer {key}"})

    answer = client.embed(model=EMBEDDING_ALIAS, input=[*SAME, OTHER])

    vectors = answer.embeddings
    assert [len(v) for v in vectors] == [384] * 3
    assert all(math.isclose(sum(x * x for x in v), 1.0, abs_tol=1e-4) for v in vectors)
    same, other = _cosine(vectors[0], vectors[1]), _cosine(vectors[0], vectors[2])
    assert same > other + 0.2, (same, other)
    assert (answer.prompt_eval_count or 0) > 3 * 5  # the model's tokens, with its markers
    jobs = api.get("/api/v1/inference/requests", headers=user_headers).get_json()["items"]
    assert [(j["kind"], j["status"]) for j in jobs] == [("embed", "completed")]


def test_openais_client_gets_them_too_and_dimensions_cut_them(
    key: str, live_server: LiveServer
) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0)
    whole = client.embeddings.create(model=EMBEDDING_ALIAS, input=list(SAME))  # base64 asked
    cut = client.embeddings.create(model=EMBEDDING_ALIAS, input=SAME[0], dimensions=64)

    assert [len(item.embedding) for item in whole.data] == [384, 384]
    first = cut.data[0].embedding
    assert len(first) == 64
    assert math.isclose(sum(x * x for x in first), 1.0, abs_tol=1e-4)
    # The first 64 of the whole vector, renormalised (float32 on the wire for base64).
    head = whole.data[0].embedding[:64]
    norm = math.sqrt(sum(x * x for x in head))
    assert all(math.isclose(a, b / norm, abs_tol=1e-4) for a, b in zip(first, head, strict=True))
    assert whole.usage.prompt_tokens > 0
