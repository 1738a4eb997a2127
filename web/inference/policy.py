"""The engine-option policy: what a caller may ask of an engine and of the queue, applied
to every job before it is stored (service.accept), whichever door it came in by.

Per Ollama option: allowed as sent, bounded (clamped to a run-time setting, for everyone),
or operator-only (a user's is refused with a 400 naming it). A user's option that is none
of these is refused too; operators and admins may send options this table does not know
(a newer engine's). keep_alive and priority are bounded for users only: the models a node
holds and the order of the queue are everyone's. docs/security.md has the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from config.runtime import RuntimeConfig, keep_alive_seconds
from db.models import Role
from web.errors import BadRequest
from web.schemas.inference import ChatRequest, EmbedRequest, GenerateRequest

# Sampling and output: the caller's business.
ALLOWED = frozenset(
    {
        "num_keep",
        "seed",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "tfs_z",
        "repeat_last_n",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "penalize_newline",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "stop",
    }
)
# How the engine loads and runs the model on the node's hardware: the operator's business.
OPERATOR_ONLY = frozenset(
    {
        "num_gpu",
        "main_gpu",
        "num_thread",
        "num_batch",
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
        "f16_kv",
        "vocab_only",
        "logits_all",
    }
)
# Clamped to the run-time bound (for every role); num_ctx below 1 is refused.
BOUNDED = ("num_predict", "num_ctx")
PRIVILEGED_ROLES = frozenset({Role.OPERATOR, Role.ADMIN})
MAX_PRIORITY = 9


@dataclass(frozen=True)
class Policed:
    """What is stored for a job: its options, keep_alive (None: not sent) and priority."""

    options: dict[str, Any]
    keep_alive: float | str | None
    priority: int


def _refuse(field: str, message: str) -> BadRequest:
    return BadRequest(f"{field}: {message}", details={"field": field})


def _whole_number(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"options.{name}", "must be a whole number")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise _refuse(f"options.{name}", "must be a whole number")
    return int(value)


def _bounded(name: str, value: Any, config: RuntimeConfig) -> Any:
    number = _whole_number(name, value)
    if name == "num_predict":
        # Ollama reads -1 as "no limit" and -2 as "until the context is full".
        bound = config.max_num_predict
        return bound if number < 0 or number > bound else value
    if number < 1:
        raise _refuse(f"options.{name}", "must be at least 1")
    return config.max_num_ctx if number > config.max_num_ctx else value


def police_options(
    options: dict[str, Any] | None, privileged: bool, config: RuntimeConfig
) -> dict[str, Any]:
    policed: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if value is None:  # the engine's default, as if not sent
            policed[name] = value
        elif name in BOUNDED:
            policed[name] = _bounded(name, value, config)
        elif name in ALLOWED or privileged:
            policed[name] = value
        elif name in OPERATOR_ONLY:
            raise _refuse(
                f"options.{name}",
                "sets how the engine uses the node's hardware; only operators may set it",
            )
        else:
            raise _refuse(f"options.{name}", "is not an engine option OllamaMax accepts")
    return policed


def police_keep_alive(
    keep_alive: float | str | None, privileged: bool, config: RuntimeConfig
) -> float | str | None:
    """None means the job names none (the engine's default applies)."""
    default = config.keep_alive_default or None
    if keep_alive is None:
        return default
    try:
        seconds = keep_alive_seconds(keep_alive)
    except ValueError as error:
        raise _refuse("keep_alive", str(error)) from None
    if privileged:
        return keep_alive
    # Unloading the model at once is everyone's loss, and under a second is at once: Ollama
    # reads a number as whole seconds (0.5 becomes 0), and "1ns" ends before the next job.
    if seconds < 1:
        return default
    if seconds > keep_alive_seconds(config.keep_alive_max):  # a pin (negative) included
        return config.keep_alive_max
    return keep_alive


def police(
    body: GenerateRequest | ChatRequest | EmbedRequest,
    role: str,
    config: RuntimeConfig,
    *,
    key_ceiling: int | None = None,
) -> Policed:
    """The job as it will be stored: clamped where the policy clamps, or a 400 naming the
    first option the caller may not set. `key_ceiling`: the caller's API key caps priority
    lower still."""
    privileged = role in PRIVILEGED_ROLES
    ceiling = MAX_PRIORITY if privileged else config.user_max_priority
    priority = config.default_priority if body.priority is None else min(body.priority, ceiling)
    if key_ceiling is not None:  # the default too: a key's jobs never rank above its ceiling
        priority = min(priority, key_ceiling)
    return Policed(
        options=police_options(body.options, privileged, config),
        keep_alive=police_keep_alive(body.keep_alive, privileged, config),
        priority=priority,
    )
