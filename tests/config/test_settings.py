"""Settings: typed, environment-driven, and strict in production."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from config.settings import DEV_SECRET_KEY, InsecureSettingsError, Settings
from tests.conftest import ROOT

STRONG = "k" * 16 + "Zq7!" * 5
ENV_EXAMPLE = ROOT / ".env.example"


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


def test_production_accepts_real_secrets() -> None:
    settings = production(
        secret_key=STRONG,
        jwt_secret_key=STRONG[::-1],
        database_url="postgresql://ollamamax:Vq2-unique-9x@db:5432/ollamamax",
    )
    assert settings.is_production


def test_invalid_values_are_validation_errors() -> None:
    with pytest.raises(ValidationError, match="log_format"):
        Settings(_env_file=None, log_format="xml")  # type: ignore[call-arg]


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
