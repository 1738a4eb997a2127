"""Settings: typed, environment-driven, and strict in production."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from config.settings import DEV_SECRET_KEY, InsecureSettingsError, Settings
from tests.conftest import ROOT

STRONG = "k" * 16 + "Zq7!" * 5
ENV_EXAMPLE = ROOT / ".env.example"
METRICS = "metrics-" + "Tq4%" * 8


def production(**values: str) -> Settings:
    return Settings(_env_file=None, app_env="production", **values)  # type: ignore[call-arg]


def test_development_fills_in_throwaway_secrets() -> None:
    settings = Settings(_env_file=None, app_env="development")  # type: ignore[call-arg]
    assert settings.secret_key == DEV_SECRET_KEY
    assert settings.jwt_secret_key


def test_production_refuses_to_start_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    with pytest.raises(InsecureSettingsError, match="SECRET_KEY is not set"):
        production()


@pytest.mark.parametrize("weak", ["change-me", DEV_SECRET_KEY, "short-but-unknown"])
def test_production_refuses_default_or_short_secrets(weak: str) -> None:
    with pytest.raises(InsecureSettingsError, match="known default or shorter"):
        production(secret_key=weak, jwt_secret_key=STRONG)


def test_production_refuses_a_default_database_password() -> None:
    with pytest.raises(InsecureSettingsError, match="DATABASE_URL uses a known default password"):
        production(
            secret_key=STRONG,
            jwt_secret_key=STRONG,
            database_url="postgresql://ollamamax:postgres@db:5432/ollamamax",
        )


def test_production_refuses_one_key_for_both_purposes() -> None:
    with pytest.raises(InsecureSettingsError, match="must differ"):
        production(secret_key=STRONG, jwt_secret_key=STRONG)


@pytest.mark.parametrize("field", ["celery_broker_url", "ratelimit_storage_url"])
def test_production_checks_every_redis_url(field: str) -> None:
    with pytest.raises(InsecureSettingsError, match=field.upper()):
        production(
            secret_key=STRONG,
            jwt_secret_key=STRONG[::-1],
            **{field: "redis://:changeme@redis:6379/0"},
        )


def test_production_refuses_rabbitmqs_default_account() -> None:
    with pytest.raises(InsecureSettingsError, match="CELERY_BROKER_URL"):
        production(
            secret_key=STRONG,
            jwt_secret_key=STRONG[::-1],
            celery_broker_url="amqp://guest:guest@rabbitmq:5672/ollamamax",
        )


def test_production_accepts_real_secrets() -> None:
    settings = production(
        secret_key=STRONG,
        jwt_secret_key=STRONG[::-1],
        database_url="postgresql://ollamamax:Vq2-unique-9x@db:5432/ollamamax",
        metrics_token=METRICS,
    )
    assert settings.is_production


def test_production_refuses_to_start_without_a_metrics_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    monkeypatch.delenv("METRICS_PUBLIC", raising=False)
    with pytest.raises(InsecureSettingsError, match="METRICS_TOKEN is not set"):
        production(secret_key=STRONG, jwt_secret_key=STRONG[::-1])
    with pytest.raises(InsecureSettingsError, match="METRICS_TOKEN is not set"):
        production(secret_key=STRONG, jwt_secret_key=STRONG[::-1], metrics_token="")


@pytest.mark.parametrize("weak", ["change-me", "s3cret", METRICS[:31]])
def test_production_refuses_a_weak_metrics_token(weak: str) -> None:
    with pytest.raises(InsecureSettingsError, match="METRICS_TOKEN is a known default or short"):
        production(secret_key=STRONG, jwt_secret_key=STRONG[::-1], metrics_token=weak)


def test_production_serves_open_metrics_only_when_told_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    monkeypatch.setenv("METRICS_PUBLIC", "true")
    settings = production(secret_key=STRONG, jwt_secret_key=STRONG[::-1])
    assert settings.metrics_public
    assert settings.metrics_token is None


def test_production_refuses_to_start_without_a_metrics_token_as_a_process() -> None:
    """The refusal as an operator meets it: the web app's process exits, naming the fix."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("METRICS_TOKEN", "METRICS_PUBLIC")
    }
    env |= {"APP_ENV": "production", "SECRET_KEY": STRONG, "JWT_SECRET_KEY": STRONG[::-1]}
    command = [sys.executable, "-c", "from config.settings import get_settings; get_settings()"]
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "METRICS_TOKEN is not set" in refused.stderr
    env["METRICS_TOKEN"] = METRICS
    assert subprocess.run(command, cwd=ROOT, env=env, capture_output=True).returncode == 0


def test_pull_registries_default_to_ollamas_and_are_host_names() -> None:
    assert Settings(_env_file=None).pull_registries == ["registry.ollama.ai"]  # type: ignore[call-arg]
    listed = Settings(_env_file=None, pull_registries="Registry.Ollama.AI, hf.co,localhost:5000")  # type: ignore[call-arg]
    assert listed.pull_registries == ["registry.ollama.ai", "hf.co", "localhost:5000"]
    with pytest.raises(ValidationError, match="not a registry host"):
        Settings(_env_file=None, pull_registries="https://evil.example/x")  # type: ignore[call-arg]


def test_invalid_values_are_validation_errors() -> None:
    with pytest.raises(ValidationError, match="log_format"):
        Settings(_env_file=None, log_format="xml")  # type: ignore[call-arg]


def test_log_levels_name_loggers_and_real_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).log_levels == {}  # type: ignore[call-arg]
    monkeypatch.setenv("LOG_LEVELS", " celery.app.trace=info, httpx=WARNING ,")
    assert Settings(_env_file=None).log_levels == {  # type: ignore[call-arg]
        "celery.app.trace": "INFO",
        "httpx": "WARNING",
    }
    for wrong in ("celery.app.trace", "celery.app.trace=LOUD", "=INFO"):
        monkeypatch.setenv("LOG_LEVELS", wrong)
        with pytest.raises(ValidationError, match="logger=LEVEL"):
            Settings(_env_file=None)  # type: ignore[call-arg]


def test_plain_postgresql_urls_use_psycopg2() -> None:
    settings = Settings(_env_file=None, database_url="postgresql://u@h/db")  # type: ignore[call-arg]
    assert settings.database_url == "postgresql+psycopg2://u@h/db"


def test_redis_roles_fall_back_to_redis_url() -> None:
    settings = Settings(_env_file=None, redis_url="redis://r:6379/2")  # type: ignore[call-arg]
    assert settings.broker_url == settings.cache_url == settings.limiter_storage_url
    moved = Settings(_env_file=None, celery_broker_url="redis://b:6379/0")  # type: ignore[call-arg]
    assert moved.broker_url == "redis://b:6379/0"


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert documented == {name.upper() for name in Settings.model_fields}
