"""What the double says: deterministic tokens, model records, and the knobs tests turn."""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
    # Loading a model that is not in memory takes this long (the first request for it
    # sleeps, and reports it as load_duration); it then stays loaded until its keep_alive
    # runs out (Ollama's default, 5 minutes); keep_alive 0 unloads it after the answer.
    load_delay_s: float = 0.0
    size_vram: int = 3340000000  # what a loaded model takes in GPU memory (/api/ps)
    # An engine's odd answer, for the worker's side of it: these pieces of text instead of
    # the prompt's own tokens (a NUL, say), and fields laid over the final chunk's (a
    # done_reason no engine we know sends, a count out of PostgreSQL's range).
    tokens: list[str] | None = None
    final_fields: dict[str, Any] | None = None


DEFAULT_KEEP_ALIVE_S = 300.0
FOREVER = timedelta(days=106751)  # a negative keep_alive: Ollama's far-future expiry
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float:
    """Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m", "-1");
    absent means 5 minutes, negative means forever (returned as -1), 0 means unload."""
    if value is None or value == "":
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, int | float):
        return float(value) if value >= 0 else -1.0
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        sign = -1.0 if text.startswith("-") else 1.0
        parts = _DURATION.findall(text.lstrip("+-"))
        if not parts:
            raise ValueError(f"time: invalid duration {text!r}") from None
        number = sign * sum(float(amount) * _UNITS[unit] for amount, unit in parts)
    return number if number >= 0 else -1.0


@dataclass
class State:
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: dict[str, datetime] = field(default_factory=dict)  # model -> when it unloads
    knobs: Knobs = field(default_factory=Knobs)
    requests: int = 0
    disconnects: list[str] = field(default_factory=list)  # prompts whose client hung up
    completed: list[str] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)  # every cold load, in order
    lock: threading.Lock = field(default_factory=threading.Lock)
    # One lock per model: requests arriving while it loads wait for that one load.
    loading: dict[str, threading.Lock] = field(default_factory=dict)

    def loaded_now(self) -> dict[str, datetime]:
        """The models in memory now (those whose keep_alive ran out are unloaded)."""
        now = datetime.now(UTC)
        with self.lock:
            for name in [n for n, until in self.loaded.items() if until <= now]:
                del self.loaded[name]
            return {n: u for n, u in self.loaded.items() if n in self.models}

    def load(self, name: str, keep_alive: Any) -> int:
        """Have `name` in memory, loading it first (knobs.load_delay_s) if it is not;
        returns the nanoseconds spent loading or waiting for a load. keep_alive sets when
        it unloads (0: the caller unloads it after its answer)."""
        seconds = keep_alive_seconds(keep_alive)
        started = time.monotonic_ns()
        with self.lock:
            gate = self.loading.setdefault(name, threading.Lock())
        with gate:
            if name not in self.loaded_now():
                time.sleep(self.knobs.load_delay_s)
                with self.lock:
                    self.loads.append(name)
            until = FOREVER if seconds < 0 else timedelta(seconds=seconds)
            with self.lock:
                self.loaded[name] = datetime.now(UTC) + until
        return max(1, time.monotonic_ns() - started)

    def unload(self, name: str) -> None:
        with self.lock:
            self.loaded.pop(name, None)

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
            if "loaded" in changes:  # these models in memory now, for the default keep_alive
                until = datetime.now(UTC) + timedelta(seconds=DEFAULT_KEEP_ALIVE_S)
                self.loaded = {canonical(n): until for n in changes.pop("loaded")}
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
                "loads": list(self.loads),
            }
