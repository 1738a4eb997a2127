"""Typed settings: the one place every environment variable is read.

Each field maps to the upper-case environment variable of the same name
(`database_url` <- `DATABASE_URL`); `.env.example` documents them all.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal, Self, get_args
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS = get_args(LogLevel)

# Development and tests only; as long as HS256 wants (32 bytes) so PyJWT does not warn.
DEV_SECRET_KEY = "dev-secret-key-not-for-production-use"  # noqa: S105
DEV_JWT_SECRET_KEY = "dev-jwt-secret-key-not-for-production"  # noqa: S105
# Values that ship in .env.example or in our development defaults. Production
# refuses to start with any of them as a secret or password.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "",
        "admin",
        "change-me",
        "changeme",
        DEV_SECRET_KEY,
        DEV_JWT_SECRET_KEY,
        "guest",  # RabbitMQ's
        "password",
        "postgres",
        "secret",
    }
)


# Where Ollama pulls a name without a host from (`llama3.2`, `library/llama3.2`).
DEFAULT_REGISTRY = "registry.ollama.ai"
_REGISTRY_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?")


def registry_host_entry(value: str) -> str:
    """One allow-listed registry: a host name with an optional port, in lower case."""
    host = value.strip().lower()
    if not _REGISTRY_HOST.fullmatch(host):
        raise ValueError(f"{value!r} is not a registry host such as registry.ollama.ai")
    return host


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class InsecureSettingsError(RuntimeError):
    """Raised when production is configured with missing or default secrets."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    app_env: Environment = Environment.DEVELOPMENT
    secret_key: str | None = None
    jwt_secret_key: str | None = None

    # PostgreSQL and the pool: up to 30 connections per web process, each kept once opened
    # (a connection opened and closed per job costs more than the job's SQL; web/app.py),
    # recycled after 5 min. A worker keeps one per slot plus a few (workers/__main__.py)
    # and closes DB_MAX_OVERFLOW more after a burst. No ping before
    # each checkout: it doubled the round trips of a one-statement transaction; a connection
    # found dead fails its request once and the pool replaces every connection of that age.
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/ollamamax"
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_recycle_s: int = Field(default=300, ge=1)
    db_pool_timeout_s: float = Field(default=10.0, gt=0)
    db_pool_pre_ping: bool = False
    # A server that accepts the TCP connection but never answers must not hang a request.
    db_connect_timeout_s: int = Field(default=5, ge=1)
    # How long a query's packets may go unacknowledged before its connection fails (libpq's
    # tcp_user_timeout): a partition then costs a 503, not a request hung for minutes.
    db_tcp_user_timeout_s: float = Field(default=10.0, gt=0)
    # The server's side of a dead link: a transaction whose client has gone silent (its host
    # cut off between two statements) is ended after this long, and its row locks with it.
    # Without it the server waits for the client for hours (its TCP keepalive) and every
    # write to those rows (a node's heartbeat, the stale-node sweep) waits as long. 0: not
    # asked (PgBouncer refuses the startup option; set it in postgresql.conf there).
    db_idle_in_transaction_timeout_s: float = Field(default=30.0, ge=0)
    db_echo: bool = False

    # Redis serves four roles; each can move to its own instance.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The broker may also be RabbitMQ: amqp://user:password@host:5672/vhost (docs/deploy.md).
    celery_broker_url: str | None = None
    ratelimit_storage_url: str | None = None
    cache_redis_url: str | None = None
    # Socket timeouts of the app's Redis client (cache, blocklist, rate limits).
    redis_timeout_s: float = Field(default=5.0, gt=0)
    # Connections per Redis pool in a web process; beyond them a request waits (REDIS_TIMEOUT_S).
    redis_max_connections: int = Field(default=50, ge=1)

    ollama_host: str = "http://127.0.0.1:11434"
    # A worker's engine: "ollama" at OLLAMA_HOST, or "openai" (any OpenAI-compatible server)
    # at ENGINE_URL. ENGINE_API_KEY is sent to servers that want one (vLLM --api-key).
    engine_kind: Literal["ollama", "openai"] = "ollama"
    engine_url: str | None = None
    engine_api_key: SecretStr | None = None
    # A worker serves its own /metrics here (none when unset); the API serves the fleet's.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Where it listens: this host only by default; 0.0.0.0 where Prometheus scrapes from
    # elsewhere (compose sets it).
    worker_metrics_host: str = "127.0.0.1"
    # When set, GET /metrics (the API's and every worker's) wants `Authorization: Bearer
    # <METRICS_TOKEN>`. Production refuses to start without one unless METRICS_PUBLIC=true
    # says, deliberately, that /metrics may answer anyone who reaches it (a firewall or a
    # proxy in front guards it instead).
    metrics_token: SecretStr | None = None
    metrics_public: bool = False
    # Registry hosts an operator may pull models from (`host[:port]`, comma-separated); the
    # run-time config (PUT /api/v1/system/config, pull_registries) overrides it.
    pull_registries: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_REGISTRY]
    )

    api_host: str = "127.0.0.1"
    api_port: int = 11400
    # Direct TLS in gunicorn (both or neither); usually a reverse proxy terminates TLS.
    gunicorn_certfile: str | None = None
    gunicorn_keyfile: str | None = None
    # Gunicorn (config/gunicorn.py): processes, and connections each gevent worker holds.
    web_concurrency: int = Field(default=2, ge=1)
    web_worker_connections: int = Field(default=2000, ge=1)
    max_content_length: int = Field(default=32 * 1024 * 1024, ge=1024)
    # The input gate (web/validation.py), for every JSON body: arrays and objects nested at
    # most this deep, strings (and keys) at most this many characters (16 Mi: a 12 MB image in
    # base64), arrays and objects at most this many items. Beyond them: 400.
    input_max_depth: int = Field(default=64, ge=8, le=512)
    input_max_string_chars: int = Field(default=16 * 1024 * 1024, ge=1024)
    input_max_items: int = Field(default=10_000, ge=100)
    # Readiness probes must answer fast even when a dependency hangs.
    health_check_timeout_s: float = Field(default=2.0, gt=0)

    # Identity: token lifetimes, hashing cost, lockout.
    access_token_ttl_s: int = Field(default=15 * 60, ge=30)
    refresh_token_ttl_s: int = Field(default=30 * 24 * 3600, ge=300)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_s: int = Field(default=15 * 60, ge=1)
    # zxcvbn's strength score (0-4) a new password must reach (web/security/passwords.py).
    password_min_score: int = Field(default=3, ge=0, le=4)

    # Rate limits (flask-limiter syntax; ";" separates limits that all apply). Anonymous
    # callers are keyed by IP, authenticated ones by user.
    ratelimit_enabled: bool = True
    ratelimit_default: str = "100/minute;10/second"
    ratelimit_login: str = "10/minute;30/hour"
    ratelimit_register: str = "5/minute;20/hour"

    # Request hygiene. CORS is off unless origins are listed; "*" is refused with credentials.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Addresses or CIDR ranges of reverse proxies whose X-Forwarded-* headers we believe.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Inference pipeline: workers, leases, retries, events.
    max_generation_s: int = Field(default=600, ge=1)  # a job running longer fails
    lease_ttl_s: int = Field(default=30, ge=2)  # a running job's claim, renewed while it streams
    engine_max_attempts: int = Field(default=3, ge=1)  # tries per job on engine faults
    engine_retry_backoff_s: float = Field(default=0.5, ge=0)  # doubled per try, with jitter
    engine_stall_timeout_s: float = Field(default=60.0, gt=0)  # no byte for this long = fault
    # A worker whose engine stops answering takes no new jobs and hands back those it took,
    # probing the engine this often; after ENGINE_DOWN_GRACE_S it stops waiting (jobs fail).
    engine_probe_s: float = Field(default=1.0, gt=0)
    # A model listing that takes longer means a busy engine (llama.cpp's server lists only
    # between generations), not a dead one: the node stays online with the list it had.
    engine_probe_timeout_s: float = Field(default=5.0, gt=0)
    engine_down_grace_s: float = Field(default=60.0, ge=0)
    # A running job holds its events while Redis is unreachable for up to this long, then is
    # handed back to the queue. Storing a finished result waits up to its lease for PostgreSQL.
    event_hold_s: float = Field(default=30.0, ge=0)
    # A stopping worker lets running jobs finish for this long, then hands them back to the
    # queue. Keep it under the supervisor's stop timeout (honcho 35 s here; Docker's default
    # is 10 s, so compose services set stop_grace_period).
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    event_ttl_s: int = Field(default=3600, ge=60)  # how long a request's events can be replayed
    token_coalesce_ms: int = Field(default=20, ge=0)  # tokens within this window share an event
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    # Warm-model-first routing (docs/pipeline.md, "Routing"): a worker whose engine does not
    # have a job's model loaded hands it to a node that has it loaded and a free slot, or,
    # when every such node is busy, offers it again every WARM_ROUTING_RETRY_S, for up to
    # WARM_ROUTING_WAIT_S; then it loads the model itself. 0 turns warm routing off.
    warm_routing_wait_s: float = Field(default=5.0, ge=0)
    warm_routing_retry_s: float = Field(default=0.5, gt=0)
    # The node's GPU memory in bytes where NVML cannot read it (a CPU node serving from RAM,
    # an engine on another host); NVML's figure wins. A model bigger than it is not served.
    gpu_memory_bytes: int | None = Field(default=None, ge=1)
    node_stale_after_s: int = Field(default=30, ge=1)  # no heartbeat for this long = offline
    sweep_interval_s: float = Field(default=5.0, gt=0)
    undispatched_grace_s: float = Field(default=10.0, ge=0)  # then the outbox sweeper re-publishes
    # A queued job published this long ago and still unclaimed is published again (lost message).
    lost_dispatch_s: float = Field(default=300.0, gt=0)
    # A job whose worker dies this many times fails instead of going back to the queue.
    job_max_attempts: int = Field(default=3, ge=1)
    # What a credential resolves to (account, role, key scopes) is remembered this long per
    # web process; a revocation evicts it everywhere at once (web/security/principal_cache.py).
    principal_cache_s: float = Field(default=5.0, ge=0)
    # Accept jobs for a model no online node serves (they wait) instead of answering 409.
    queue_while_unavailable: bool = False
    default_priority: int = Field(default=5, ge=0, le=9)  # of a job that names none
    # The engine-option policy (web/inference/policy.py, docs/security.md), each a run-time
    # setting too: a user's priority is clamped to USER_MAX_PRIORITY (operators and admins
    # up to 9); num_predict and num_ctx are clamped to these for everyone; a user's
    # keep_alive is clamped to KEEP_ALIVE_MAX (a Go duration such as "30m"), and a job that
    # names none gets KEEP_ALIVE_DEFAULT (empty: the engine's own default).
    user_max_priority: int = Field(default=6, ge=0, le=9)
    max_num_predict: int = Field(default=4096, ge=1)
    max_num_ctx: int = Field(default=32768, ge=1)
    keep_alive_max: str = "30m"
    keep_alive_default: str = ""
    # Quotas (web/inference/quotas.py, docs/security.md), each a run-time setting too: what a
    # plain user may hold at once and spend in a UTC day unless an admin sets the account's
    # own (operators and admins have none unless set); 0 means no limit. A job past
    # QUOTA_MAX_QUEUED_JOBS or the day's tokens is refused (429); past
    # QUOTA_MAX_RUNNING_JOBS it waits its turn; a socket past QUOTA_MAX_WEBSOCKETS is refused.
    quota_max_queued_jobs: int = Field(default=100, ge=0)
    quota_max_running_jobs: int = Field(default=4, ge=0)
    quota_tokens_per_day: int = Field(default=0, ge=0)
    quota_max_websockets: int = Field(default=20, ge=0)
    # A job held back by its owner's running-jobs quota is offered again after this long.
    quota_wait_retry_s: float = Field(default=1.0, gt=0)
    # Fair share (docs/pipeline.md, "Fair share"): when a model's slots are contended, the
    # claim starts the fair-first waiting job of the model rather than the message's own:
    # the user with the fewest starts of that model in the last FAIR_SHARE_WINDOW_S (divided
    # by their weight) goes first; waiting earns one start of credit per FAIR_SHARE_AGING_S,
    # and each priority level above (below) 5 is worth FAIR_SHARE_PRIORITY_CREDIT starts,
    # a bounded amount. Off: a message claims exactly its own job. An account's weight is
    # its own (admins set it) or FAIR_SHARE_DEFAULT_WEIGHT (a run-time setting too).
    fair_share: bool = True
    fair_share_window_s: float = Field(default=300.0, gt=0)
    fair_share_aging_s: float = Field(default=60.0, gt=0)
    fair_share_priority_credit: float = Field(default=0.5, ge=0, le=10)
    fair_share_default_weight: float = Field(default=1.0, ge=0.1, le=100)
    # /metrics names this many users by queue depth; the rest are summed as "_other".
    fair_share_metrics_top_users: int = Field(default=10, ge=1, le=100)
    # Finished requests, dead sessions and audit partitions older than this are removed.
    retention_days: int = Field(default=90, ge=1, le=3650)
    # How long a process reuses the run-time config it read (system config changes).
    live_config_ttl_s: float = Field(default=2.0, gt=0)

    # Real-time relay (WebSockets).
    ws_heartbeat_s: float = Field(default=15.0, gt=0)  # a heartbeat frame after this much quiet
    ws_ping_interval_s: float = Field(default=25.0, gt=0)  # no pong within one = dropped
    ws_send_queue: int = Field(default=1024, ge=1)  # frames a socket may lag behind, then cut off
    ws_cutoff_grace_s: float = Field(default=5.0, gt=0)  # a cut-off client that reads nothing
    # The kernel's send buffer per socket. Fixed rather than auto-tuned (up to 4 MB each), so
    # a slow client's backlog is bounded in the kernel too and shows up in our queue.
    ws_socket_send_buffer: int = Field(default=65536, ge=4096)
    ws_max_message_bytes: int = Field(default=65536, ge=256)  # largest client message
    # An open socket's credential (logout, key revocation) is checked again this often.
    ws_access_recheck_s: float = Field(default=60.0, gt=0)
    system_metrics_interval_s: float = Field(default=5.0, gt=0)

    # Completion webhooks (docs/webhooks.md), delivered by `python -m web.webhooks`. A URL
    # whose host resolves to a private, loopback, link-local, multicast, reserved or
    # unspecified address is refused unless its host name or address is listed here
    # (comma-separated host names, addresses or CIDR ranges).
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A failed delivery is tried again after WEBHOOK_BACKOFF_S, doubled per attempt up to
    # WEBHOOK_BACKOFF_MAX_S, each wait jittered (full jitter), until WEBHOOK_RETRY_WINDOW_S
    # after the job ended; then it is given up (a redeliver starts a new window).
    webhook_backoff_s: float = Field(default=5.0, gt=0)
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_retry_window_s: float = Field(default=24 * 3600.0, gt=0)
    # Short, so a slow receiver costs the deliverer little; a receiver answers later at its peril.
    webhook_connect_timeout_s: float = Field(default=3.0, gt=0)
    webhook_read_timeout_s: float = Field(default=5.0, gt=0)
    # Deliveries the deliverer process makes at once (its own threads, never a worker slot).
    webhook_concurrency: int = Field(default=8, ge=1, le=256)

    log_level: LogLevel = "INFO"
    log_format: str = Field(default="json", pattern="^(json|console)$")
    # Levels for single loggers, over LOG_LEVEL: "celery.app.trace=INFO,httpx=INFO" brings
    # back Celery's line per task, or the engine client's line per HTTP call.
    log_levels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    # Used by `flask create-admin` when no option or stdin gives them.
    admin_username: str | None = None
    admin_email: str | None = None
    admin_password: str | None = None

    # The one-command local stack (`make run`, ops/supervisor.py).
    flower_port: int = Field(default=11555, ge=1, le=65535)
    # "user:password" for Flower's basic auth; the stack generates one when unset.
    flower_basic_auth: SecretStr | None = None
    # Where the embedded llama.cpp server listens when no Ollama answers at OLLAMA_HOST.
    embedded_engine_port: int = Field(default=11480, ge=1, le=65535)
    # ...and its embedding model (all-MiniLM-L6-v2), behind a worker of its own.
    embedded_embedding_port: int = Field(default=11481, ge=1, le=65535)
    # Generated credentials and beat's schedule, kept between runs (git-ignored).
    stack_state_dir: str = ".ollamamax"

    @field_validator(
        "cors_origins", "trusted_proxies", "pull_registries", "webhook_allowed_hosts", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """Lists come from the environment as "a,b,c"."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("log_levels", mode="before")
    @classmethod
    def _logger_levels(cls, value: object) -> object:
        """Pairs from the environment as "name=LEVEL,name=LEVEL"; every level a real one."""
        if isinstance(value, str):
            pairs = [item.partition("=") for item in value.split(",") if item.strip()]
            value = {name.strip(): level.strip().upper() for name, _, level in pairs}
        if isinstance(value, dict):
            for name, level in value.items():
                if not name or level not in LOG_LEVELS:
                    raise ValueError(
                        f"{name}={level}: LOG_LEVELS takes logger=LEVEL pairs, the level one"
                        f" of {', '.join(LOG_LEVELS)}"
                    )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # raises ValueError when malformed
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _webhook_hosts(cls, value: list[str]) -> list[str]:
        """Host names in lower case; anything with a digit-and-dot or colon shape must be a
        valid address or CIDR range (a typo must not silently allow nothing)."""
        entries = []
        for entry in value:
            entry = entry.strip().lower()
            if re.fullmatch(r"[0-9./]+|[0-9a-f:./]*:[0-9a-f:./]*", entry):
                ipaddress.ip_network(entry, strict=False)  # raises ValueError when malformed
            elif not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", entry):
                raise ValueError(f"{entry!r} is not a host name, address or CIDR range")
            entries.append(entry)
        return entries

    @field_validator("pull_registries")
    @classmethod
    def _registry_hosts(cls, value: list[str]) -> list[str]:
        return [registry_host_entry(host) for host in value]

    @field_validator("database_url")
    @classmethod
    def _psycopg2_driver(cls, url: str) -> str:
        """`postgresql://` alone would pick SQLAlchemy's default driver; we ship psycopg2."""
        scheme, _, rest = url.partition("://")
        return f"postgresql+psycopg2://{rest}" if scheme in ("postgres", "postgresql") else url

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def limiter_storage_url(self) -> str:
        return self.ratelimit_storage_url or self.redis_url

    @property
    def cache_url(self) -> str:
        return self.cache_redis_url or self.redis_url

    @property
    def is_production(self) -> bool:
        return self.app_env is Environment.PRODUCTION

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> Self:
        if bool(self.gunicorn_certfile) != bool(self.gunicorn_keyfile):
            raise ValueError("set both GUNICORN_CERTFILE and GUNICORN_KEYFILE, or neither")
        return self

    @model_validator(mode="after")
    def _secrets_fit_environment(self) -> Self:
        if self.is_production:
            problems = _production_problems(self)
            if problems:
                raise InsecureSettingsError(
                    "refusing to start in production: " + "; ".join(problems)
                )
        else:
            self.secret_key = self.secret_key or DEV_SECRET_KEY
            self.jwt_secret_key = self.jwt_secret_key or DEV_JWT_SECRET_KEY
        return self


def _production_problems(settings: Settings) -> list[str]:
    problems = []
    for name in ("secret_key", "jwt_secret_key"):
        value = getattr(settings, name)
        if value is None:
            problems.append(f"{name.upper()} is not set")
        elif value.lower() in KNOWN_DEFAULT_SECRETS or len(value) < 32:
            problems.append(f"{name.upper()} is a known default or shorter than 32 characters")
    if settings.secret_key and settings.secret_key == settings.jwt_secret_key:
        problems.append("SECRET_KEY and JWT_SECRET_KEY must differ")
    for name in (
        "database_url",
        "redis_url",
        "celery_broker_url",
        "ratelimit_storage_url",
        "cache_redis_url",
    ):
        password = _url_password(getattr(settings, name))
        if password is not None and password.lower() in KNOWN_DEFAULT_SECRETS:
            problems.append(f"{name.upper()} uses a known default password")
    if settings.admin_password and settings.admin_password.lower() in KNOWN_DEFAULT_SECRETS:
        problems.append("ADMIN_PASSWORD is a known default")
    metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if not metrics_token and not settings.metrics_public:
        problems.append(
            "METRICS_TOKEN is not set (set METRICS_PUBLIC=true to serve /metrics to anyone)"
        )
    elif metrics_token and (
        metrics_token.lower() in KNOWN_DEFAULT_SECRETS or len(metrics_token) < 32
    ):
        problems.append("METRICS_TOKEN is a known default or shorter than 32 characters")
    return problems


def _url_password(url: str | None) -> str | None:
    return urlsplit(url).password if url else None


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()


def build_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the environment with explicit overrides on top (used by tests)."""
    if not overrides:
        return get_settings()
    return Settings(**overrides)
