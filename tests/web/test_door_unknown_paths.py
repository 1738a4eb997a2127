"""A request no route takes answers in the shape of the door whose paths it is under:
Ollama's `{"error": "..."}` under /api/* (but not our own /api/v1), OpenAI's error object
under /v1/*, the API's own error object anywhere else."""

from __future__ import annotations

from flask.testing import FlaskClient


def test_an_unknown_ollama_path_or_method_answers_in_ollamas_shape(client: FlaskClient) -> None:
    unknown = client.post("/api/nothing-here", json={})
    assert unknown.status_code == 404
    assert set(unknown.get_json()) == {"error"}
    assert isinstance(unknown.get_json()["error"], str)
    wrong = client.get("/api/generate")
    assert wrong.status_code == 405
    assert set(wrong.get_json()) == {"error"}
    assert "POST" in wrong.headers["Allow"]


def test_our_own_api_and_other_paths_keep_the_error_object(client: FlaskClient) -> None:
    for path in ("/api/v1/nothing-here", "/nothing-here", "/api"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer.get_json()["error"]["code"] == "not_found", path


def test_an_unknown_openai_path_answers_in_openais_shape(client: FlaskClient) -> None:
    answer = client.post("/v1/audio/speech", json={"model": "x", "input": "hi"})
    assert answer.status_code == 404
    assert set(answer.get_json()["error"]) == {"message", "type", "param", "code"}
