"""Clients for the inference engines a worker can front."""

from __future__ import annotations

from collections.abc import Sequence

from config.settings import Settings
from workers.engines.base import Engine


def make_engine(
    kind: str,
    url: str,
    settings: Settings,
    *,
    capabilities: Sequence[str] = (),
    connections: int = 20,
) -> Engine:
    """The client for an engine of `kind` ("ollama" or "openai") at `url`. `capabilities`:
    what an OpenAI-compatible server's models can do, as the operator says (its protocol
    says nothing); Ollama reports its own. `connections`: how many an Ollama client keeps
    open (one per slot that streams at once)."""
    if kind == "openai":
        from workers.engines.openai import OpenAIEngine

        key = settings.engine_api_key.get_secret_value() if settings.engine_api_key else None
        return OpenAIEngine(
            url,
            stall_timeout_s=settings.engine_stall_timeout_s,
            listing_timeout_s=settings.engine_probe_timeout_s,
            api_key=key,
            capabilities=capabilities,
        )
    from workers.engines.ollama import OllamaEngine

    return OllamaEngine(
        url,
        stall_timeout_s=settings.engine_stall_timeout_s,
        listing_timeout_s=settings.engine_probe_timeout_s,
        connections=connections,
    )
