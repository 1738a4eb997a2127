"""docker/compose.yaml and its config files, checked with no Docker engine: `docker compose
config` must resolve the stack for the default set and every profile, and what it resolves
must keep the deployment's rules (health checks, ports, PgBouncer, secrets) and agree with
the code (settings names, worker flags, CLI commands, metric names)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from config.settings import Settings
from tests.ops.compose import (
    APP_EXTRA_ENV,
    APP_SERVICES,
    COMPOSE_FILE,
    DEFAULT_SERVICES,
    DOCKER,
    PROFILE_SERVICES,
    PROFILES,
    SECRET_NAME,
    SECRETS,
    raw,
    resolved,
    run_compose,
    services,
)
from web.cli import create_admin, db_group
from workers.__main__ import parse as parse_worker_args
from workers.brokers import redelivery_timeout_s


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_compose_config_validates(profile: str | None) -> None:
    profiles = (profile,) if profile else ()
    done = run_compose("config", "--quiet", profiles=profiles)
    assert done.returncode == 0, done.stderr
    listed = run_compose("config", "--services", profiles=profiles)
    expected = DEFAULT_SERVICES | (PROFILE_SERVICES[profile] if profile else set())
    assert set(listed.stdout.split()) == expected


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_a_missing_secret_stops_compose_with_its_name(name: str) -> None:
    env = {key: value for key, value in SECRETS.items() if key != name}
    done = run_compose("config", "--quiet", env=env)
    assert done.returncode != 0
    assert name in done.stderr


def test_every_service_has_a_health_check() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert len(check["test"]) > 1, name


def test_a_service_that_dies_is_restarted_and_one_shots_are_not() -> None:
    """A worker that fails exits non-zero (workers/__main__.py), and Docker starts it again;
    `unless-stopped` also brings it back after a reboot, which `on-failure` would not."""
    one_shots = {"migrate", "benchmark"}
    for name, service in services().items():
        expected = "no" if name in one_shots else "unless-stopped"
        assert service.get("restart") == expected, name
    for name in APP_SERVICES - one_shots:
        assert services()[name].get("init") is True, name  # tini passes signals and the status


def test_host_ports_stay_above_11111_and_off_ollamas() -> None:
    published = {
        name: [int(port["published"]) for port in service.get("ports", [])]
        for name, service in services().items()
    }
    for name, ports in published.items():
        for port in ports:
            assert port > 11111, f"{name} publishes {port}"
            assert port != 11434, f"{name} takes Ollama's port"
    assert published["web"] == [11400]
    assert published["flower"] == [11555]
    # Nothing but the API listens beyond loopback by default.
    for name, service in services().items():
        for port in service.get("ports", []):
            expected = "0.0.0.0" if name == "web" else "127.0.0.1"  # noqa: S104
            assert port["host_ip"] == expected, name


def test_the_app_reaches_postgresql_through_pgbouncer_in_transaction_mode() -> None:
    stack = services()
    for name in APP_SERVICES - {"migrate", "webhooks"}:
        url = urlsplit(stack[name]["environment"]["DATABASE_URL"])
        assert (url.hostname, url.port) == ("pgbouncer", 6432), name
    assert stack["pgbouncer"]["environment"]["POOL_MODE"] == "transaction"
    assert stack["pgbouncer"]["environment"]["LISTEN_PORT"] == "6432"
    # Migrations (DDL in one transaction), the benchmark's scratch databases and the webhook
    # deliverer (LISTEN holds a session) go direct.
    for name in ("migrate", "benchmark", "webhooks"):
        assert urlsplit(stack[name]["environment"]["DATABASE_URL"]).hostname == "postgres"


def test_secrets_come_only_from_the_environment() -> None:
    text = COMPOSE_FILE.read_text()
    # No secret variable has a default: required ones use ${X:?...}, optional ones ${X:-}.
    for match in re.finditer(r"\$\{(\w+):-([^}]*)\}", text):
        if SECRET_NAME.search(match.group(1)):
            assert match.group(2) == "", f"{match.group(0)} has a default"

    def walk_environment(environment: dict[str, Any], where: str) -> None:
        for key, value in environment.items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+:[?-][^}]*\}", value), f"{where}.{key} = {value}"
            password = urlsplit(value).password if "://" in value else None
            if password is not None:
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", password), f"{where}.{key}"

    document = raw()
    walk_environment(document["x-app-env"], "x-app-env")
    for name, service in document["services"].items():
        walk_environment(service.get("environment") or {}, name)
    # What was given comes out where it belongs, and nowhere else is a password spelled out.
    stack = json.dumps(resolved())
    assert SECRETS["POSTGRES_PASSWORD"] in stack
    assert not re.search(r"PASSWORD\W+(postgres|password|admin|changeme)\b", stack, re.I)


def test_app_services_share_one_image_and_their_environment_is_valid_settings() -> None:
    stack = services()
    images = {stack[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        assert stack[name]["build"]["target"] == "runtime", name
        assert stack[name]["build"]["dockerfile"] == "docker/Dockerfile", name
    assert stack["benchmark"]["build"]["target"] == "bench"

    fields = {name.upper() for name in Settings.model_fields}
    for name in APP_SERVICES | {"benchmark"}:
        environment = stack[name]["environment"]
        unknown = set(environment) - fields - APP_EXTRA_ENV
        assert unknown == set(), f"{name}: not settings: {unknown}"
        given = {key.lower(): value for key, value in environment.items() if key in fields}
        settings = Settings(_env_file=None, **given)  # type: ignore[call-arg]
        assert settings.is_production  # and so its secrets passed the production checks


def test_commands_match_the_code() -> None:
    stack = services()
    assert stack["web"]["command"] == ["gunicorn", "-c", "config/gunicorn.py", "wsgi:app"]
    assert stack["beat"]["command"][:4] == ["celery", "-A", "workers.celery_app", "beat"]
    assert stack["flower"]["command"][:4] == ["celery", "-A", "workers.celery_app", "flower"]
    assert stack["webhooks"]["command"][:3] == ["python", "-m", "web.webhooks"]
    assert stack["llama"]["command"][:3] == ["python", "-m", "workers.llama_server"]
    migrate_script = stack["migrate"]["command"][-1]
    assert "flask --app wsgi db upgrade" in migrate_script
    assert "upgrade" in db_group.commands
    assert "--exists-ok" in {opt for param in create_admin.params for opt in param.opts}

    for name in ("worker-gpu0", "worker-gpu1", "worker-cpu"):
        command = stack[name]["command"]
        assert command[:4] == ["python", "-m", "workers", "run"], name
        args = parse_worker_args(command[3:])  # the worker's own parser accepts every flag
        assert args.name == stack[name]["environment"]["NODE_NAME"], name
        assert args.name.endswith(f"@{stack[name]['hostname']}"), name
    for gpu in (0, 1):
        worker = parse_worker_args(stack[f"worker-gpu{gpu}"]["command"][3:])
        assert worker.gpu == gpu
        assert worker.engine_url == f"http://ollama-gpu{gpu}:11434"
        devices = stack[f"ollama-gpu{gpu}"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": [str(gpu)], "capabilities": ["gpu"]}]
        reserved = stack[f"worker-gpu{gpu}"]["deploy"]["resources"]["reservations"]["devices"]
        assert reserved[0]["driver"] == "nvidia"
    assert parse_worker_args(stack["worker-cpu"]["command"][3:]).engine == "openai"


def test_the_rabbitmq_profile_runs_the_broker_the_app_is_pointed_at() -> None:
    password = "dummy-rabbitmq-pw-51ce"
    env = {
        **SECRETS,
        "RABBITMQ_PASSWORD": password,
        "CELERY_BROKER_URL": f"amqp://ollamamax:{password}@rabbitmq:5672/ollamamax",
    }
    done = run_compose("config", "--format", "json", profiles=("gpu", "rabbitmq"), env=env)
    assert done.returncode == 0, done.stderr
    stack = json.loads(done.stdout)["services"]
    rabbit = stack["rabbitmq"]["environment"]
    for name in ("web", "beat", "flower", "worker-gpu0", "worker-gpu1"):
        url = urlsplit(stack[name]["environment"]["CELERY_BROKER_URL"])
        assert (url.scheme, url.hostname, url.port) == ("amqp", "rabbitmq", 5672), name
        assert (url.username, url.password) == (rabbit["RABBITMQ_DEFAULT_USER"], password), name
        assert url.path == "/" + rabbit["RABBITMQ_DEFAULT_VHOST"], name
        dependency = stack[name]["depends_on"]["rabbitmq"]
        assert (dependency["condition"], dependency["required"]) == ("service_healthy", False)
    assert rabbit["RABBITMQ_DEFAULT_PASS"] == password
    # Without the profile's variables the broker is Redis (an empty URL means REDIS_URL).
    assert services()["web"]["environment"]["CELERY_BROKER_URL"] == ""

    # RabbitMQ must never take back a job's message from a worker still generating it.
    mounts = {volume["target"]: volume["source"] for volume in stack["rabbitmq"]["volumes"]}
    conf = Path(mounts["/etc/rabbitmq/conf.d/90-ollamamax.conf"]).read_text()
    found = re.search(r"^consumer_timeout\s*=\s*(\d+)$", conf, re.M)
    assert found is not None
    web = stack["web"]["environment"]
    settings = Settings(_env_file=None, max_generation_s=web["MAX_GENERATION_S"])  # type: ignore[call-arg]
    assert int(found.group(1)) >= redelivery_timeout_s(settings) * 1000


def test_gpu_pairs_are_written_once_with_anchors() -> None:
    text = COMPOSE_FILE.read_text()
    assert text.count("<<: *ollama") == 2
    assert text.count("<<: *gpu-worker") == 2
    pair = [{k: v for k, v in services()[f"worker-gpu{n}"].items()} for n in (0, 1)]
    for worker in pair:
        for varying in ("command", "hostname", "depends_on"):
            worker.pop(varying)
        worker["environment"].pop("NODE_NAME")
    assert pair[0] == pair[1]


def test_mounted_files_exist_and_every_variable_is_documented() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"
    documented = set(re.findall(r"^(\w+)=", (DOCKER / ".env.example").read_text(), re.M))
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    assert used - documented == set()


def test_prometheus_scrapes_the_api_flower_workers_and_exporters() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {
        "web:11400",
        "webhooks:9102",
        "flower:5555",
        "postgres-exporter:9187",
        "redis-exporter:9121",
    } <= targets
    workers = next(job for job in config["scrape_configs"] if job["job_name"].endswith("workers"))
    assert set(workers["dns_sd_configs"][0]["names"]) == {
        "worker-gpu0",
        "worker-gpu1",
        "worker-cpu",
    }
    for target in targets - {"localhost:9090"}:
        assert target.split(":")[0] in services(), target


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "ollamamax.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"

    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "ollamamax.json").read_text())
    panels = dashboard["panels"]
    assert {panel["datasource"]["uid"] for panel in panels} == {uid}
    expressions = " ".join(t["expr"] for panel in panels for t in panel["targets"])
    for metric in (
        "ollamamax_queue_depth",
        "ollamamax_queue_wait_seconds_bucket",
        "ollamamax_time_to_first_token_seconds_bucket",
        "ollamamax_tokens_per_second",
        "ollamamax_gpu_memory_used_bytes",
        "ollamamax_gpu_memory_total_bytes",
        "ollamamax_gpu_utilization_ratio",
        "ollamamax_http_requests_total",
        "ollamamax_inference_requests_total",
    ):
        assert metric in expressions, metric
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("queue depth", "queue wait", "first token", "tokens per second", "gpu memory"):
        assert topic in titles, topic
    assert "errors" in titles
