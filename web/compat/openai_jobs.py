"""OpenAI requests as OllamaMax jobs: the parameters mapped onto Ollama's options and
messages (docs/compat.md), then validated as any native job is."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from web.compat.jobs import validated
from web.errors import APIError
from web.schemas.inference import ChatRequest, GenerateRequest
from web.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIContentPart,
    OpenAIMessage,
    OpenAISampling,
)


def _options(req: OpenAISampling, max_tokens: int | None) -> dict[str, Any] | None:
    options: dict[str, Any] = {
        "num_predict": max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "stop": [req.stop] if isinstance(req.stop, str) else req.stop,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
    }
    return {k: v for k, v in options.items() if v is not None} or None


def _content(parts: str | list[OpenAIContentPart] | None, where: str) -> tuple[str, list[str]]:
    """Text and base64 images of a message's content."""
    if parts is None or isinstance(parts, str):
        return parts or "", []
    texts, images = [], []
    for part in parts:
        if part.type == "text":
            texts.append(part.text or "")
        elif part.image_url is not None:
            url = part.image_url.url
            head, _, data = url.partition(",")
            if not (head.startswith("data:") and head.endswith(";base64") and data):
                # Fetching a caller's URL from inside the fleet would be a way in (SSRF).
                raise APIError(
                    "image_url must be a base64 data: URL; remote images are not fetched",
                    details={"field": f"{where}.content"},
                )
            images.append(data)
    return "\n".join(texts), images


def _tool_calls(message: OpenAIMessage, where: str) -> list[dict[str, Any]] | None:
    if not message.tool_calls:
        return None
    calls = []
    for call in message.tool_calls:
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError:
            raise APIError(
                "tool call arguments must be JSON text",
                details={"field": f"{where}.tool_calls"},
            ) from None
        entry: dict[str, Any] = {"function": {"name": call.function.name, "arguments": arguments}}
        if call.id:  # the tool message that answers it names this id
            entry["id"] = call.id
        calls.append(entry)
    return calls


def chat_job(req: ChatCompletionRequest) -> ChatRequest:
    messages = []
    called: dict[str, str] = {}  # tool-call id -> the function it called
    for index, message in enumerate(req.messages):
        where = f"messages.{index}"
        text, images = _content(message.content, where)
        converted: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": text,
            "images": images or None,
            "tool_calls": _tool_calls(message, where),
        }
        for call in message.tool_calls or []:
            if call.id:
                called[call.id] = call.function.name
        if message.role == "tool":
            converted["tool_call_id"] = message.tool_call_id
            # OpenAI's tool message names the call; Ollama's templates want the tool's name.
            converted["tool_name"] = message.name or called.get(message.tool_call_id or "")
        messages.append({k: v for k, v in converted.items() if v is not None})
    response_format = req.response_format
    fmt: Any = None
    if response_format is not None and response_format.type == "json_object":
        fmt = "json"
    elif response_format is not None and response_format.type == "json_schema":
        fmt = (response_format.json_schema or {}).get("schema") or {"type": "object"}
    job = {
        "model": req.model,
        "messages": messages,
        "tools": req.tools,
        "tool_choice": (
            req.tool_choice.model_dump()
            if isinstance(req.tool_choice, BaseModel)
            else req.tool_choice
        ),
        "parallel_tool_calls": req.parallel_tool_calls,
        "format": fmt,
        "options": _options(req, req.max_completion_tokens or req.max_tokens),
        "priority": req.priority,
    }
    result: ChatRequest = validated(
        ChatRequest, {k: v for k, v in job.items() if v is not None}, known_only=False
    )
    return result


def _prompt(req: CompletionRequest) -> str:
    if isinstance(req.prompt, str):
        return req.prompt
    if len(req.prompt) != 1:
        raise APIError("prompt: send exactly one prompt", details={"field": "prompt"})
    return req.prompt[0]


def generate_job(req: CompletionRequest) -> GenerateRequest:
    job = {
        "model": req.model,
        "prompt": _prompt(req),
        "suffix": req.suffix,
        "raw": True,  # completions apply no template
        "options": _options(req, req.max_tokens),
        "priority": req.priority,
    }
    result: GenerateRequest = validated(
        GenerateRequest, {k: v for k, v in job.items() if v is not None}, known_only=False
    )
    return result
