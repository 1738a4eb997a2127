"""The official `ollama` and `openai` clients, given a bearer that is neither a key nor a JWT
we issued, get a 401 they understand (ollama.ResponseError 401, openai.AuthenticationError),
never a 500 their retry logic would chase. In-process, over httpx's WSGI transport; the full
matrix of bad credentials x door routes is in tests/web/identity/test_authorization_matrix.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import ollama
import openai
import pytest
from flask import Flask

BEARERS = {
    "malformed": "wrong",
    "foreign": jwt.encode(
        {
            "sub": "00000000-0000-0000-0000-000000000000",
            "fam": "00000000-0000-0000-0000-000000000000",
            "type": "access",
            "exp": datetime.now(UTC) + timedelta(days=365),
        },
        "someone-elses-signing-key-32-bytes!",
        algorithm="HS256",
    ),
    "wrong_key": "omx_0123456789_" + "x" * 43,
}
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("bearer", sorted(BEARERS))
def test_the_ollama_client_gets_a_401(app: Flask, redis_client: Any, bearer: str) -> None:
    door = ollama.Client(
        host="http://door.test",
        headers={"Authorization": f"Bearer {BEARERS[bearer]}"},
        transport=httpx.WSGITransport(app=app),
    )
    calls: dict[str, Callable[[], Any]] = {
        "list": door.list,
        "ps": door.ps,
        "show": lambda: door.show("llama3.2"),
        "generate": lambda: door.generate(model="llama3.2", prompt="hi"),
        "chat streamed": lambda: next(iter(door.chat("llama3.2", MESSAGES, stream=True))),
        "pull streamed": lambda: next(iter(door.pull("llama3.2", stream=True))),
        "delete": lambda: door.delete("llama3.2"),
    }
    for name, call in calls.items():
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 401, name
        assert isinstance(refused.value.error, str), name


@pytest.mark.parametrize("bearer", sorted(BEARERS))
def test_the_openai_client_gets_an_authentication_error(
    app: Flask, redis_client: Any, bearer: str
) -> None:
    door = openai.OpenAI(
        base_url="http://door.test/v1",
        api_key=BEARERS[bearer],
        max_retries=0,
        http_client=httpx.Client(transport=httpx.WSGITransport(app=app)),
    )
    calls: dict[str, Callable[[], Any]] = {
        "models": door.models.list,
        "model": lambda: door.models.retrieve("llama3.2"),
        "chat": lambda: door.chat.completions.create(model="llama3.2", messages=MESSAGES),
        "chat streamed": lambda: door.chat.completions.create(
            model="llama3.2", messages=MESSAGES, stream=True
        ),
        "completions": lambda: door.completions.create(model="llama3.2", prompt="hi"),
    }
    for name, call in calls.items():
        with pytest.raises(openai.AuthenticationError) as refused:
            call()
        assert refused.value.status_code == 401, name
        assert refused.value.code == "invalid_api_key", name
        assert refused.value.type == "invalid_request_error", name
