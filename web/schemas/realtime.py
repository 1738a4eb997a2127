"""What the WebSocket handshakes take in their query string (documentation only: the socket
views parse it themselves, since a refusal there is a frame, not an HTTP answer)."""

from __future__ import annotations

from pydantic import BaseModel, Field

TOKEN = Field(
    default=None,
    description="An access token or API key, for clients that cannot set Authorization.",
)


class StreamQuery(BaseModel):
    after: int = Field(
        default=0,
        ge=0,
        le=10**18 - 1,
        description="Replay the events after this seq (resume); 0: all.",
    )
    token: str | None = TOKEN


class TopicQuery(BaseModel):
    token: str | None = TOKEN
