"""What the double says: deterministic tokens, model records, and the knobs tests turn."""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

VOCABULARY = (
    "the",
    "sky",
    "is",
    "blue",
    "because",
    "light",
    "scatters",
    "off",
    "small",
    "molecules",
    "in",
    "air",
    "and",
    "shorter",
    "waves",
    "bend",
    "more",
    "than",
    "longer",
    "ones",
    "so",
    "we",
    "see",
    "blue",
    "overhead",
    "during",
    "the",
    "day",
    "while",
    "sunsets",
    "glow",
    "red",
    "orange",
    "and",
    "gold",
    "as",
    "light",
    "travels",
    "further",
    "through",
    "the",
    "atmosphere",
)


def tokens_for(prompt: str, count: int) -> list[str]:
    """The same prompt always yields the same tokens: runs can be compared exactly."""
    words = []
    for index in range(count):
        digest = hashlib.sha256(f"{prompt}\x00{index}".encode()).digest()
        word = VOCABULARY[int.from_bytes(digest[:4], "big") % len(VOCABULARY)]
        words.append(word if index == 0 else " " + word)
    return words


EMBEDDING_SIZE = 16
CONTEXT_WORDS = 512  # an input longer than this many words exceeds the context


def embedding_for(text: str, dimensions: int | None = None) -> list[float]:
    """The same text always has the same unit-length vector (Ollama's /api/embed answers
    vectors of length 1, cut to `dimensions` first when asked)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:EMBEDDING_SIZE]]
    kept = raw[:dimensions] if dimensions else raw
    norm = math.sqrt(sum(value * value for value in kept)) or 1.0
    return [value / norm for value in kept]


def rfc3339(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def model_record(name: str) -> dict[str, Any]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-05-04T17:37:44.706015396-07:00",
        "size": 2019393189,
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        },
    }


def canonical(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass
class Knobs:
    """Set through POST /_double/config; every field is optional there."""

    token_delay_s: float = 0.0  # between tokens
    first_token_delay_s: float = 0.0
    default_tokens: int = 8  # when the request sets no num_predict
    # One of: None, "503", "500", "midstream_error", "stall". Applies to the next
    # `fault_count` inference requests, then clears itself.
    fault: str | None = None
    fault_count: int = 1
    fault_after_tokens: int = 2  # for midstream_error and stall
    stall_s: float = 30.0
    # A chat request that offers tools calls the first one with these arguments, in one
    # chunk of its own after the text, as Ollama streams a tool call.
    tool_arguments: dict[str, Any] | None = None
    # Names the registry does not have: pulling one fails as Ollama's does (reference 7:
    # "Pull stream"). Every other name pulls.
    missing_from_registry: list[str] = field(default_factory=list)


@dataclass
class State:
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: dict[str, datetime] = field(default_factory=dict)
    knobs: Knobs = field(default_factory=Knobs)
    requests: int = 0
    disconnects: list[str] = field(default_factory=list)  # prompts whose client hung up
    completed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            fault = self.knobs.fault
            if fault is not None:
                self.knobs.fault_count -= 1
                if self.knobs.fault_count <= 0:
                    self.knobs.fault = None
            return fault

    def configure(self, changes: dict[str, Any]) -> None:
        with self.lock:
            if "models" in changes:
                self.models = {
                    canonical(n): model_record(canonical(n)) for n in changes.pop("models")
                }
            for key, value in changes.items():
                if not hasattr(self.knobs, key):
                    raise ValueError(f"unknown knob {key}")
                setattr(self.knobs, key, value)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "disconnects": list(self.disconnects),
                "completed": list(self.completed),
                "models": sorted(self.models),
            }
