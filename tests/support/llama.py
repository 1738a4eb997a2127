"""The embedded engine's llama.cpp server as a test fixture: `python -m workers.llama_server`
with the arguments given, started and waited for until it lists its model."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.conftest import ROOT, free_port
from tests.pipeline.conftest import wait_for


@dataclass
class LlamaServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def llama_server(folder: Path, *arguments: str) -> Iterator[LlamaServer]:
    port = free_port()
    log_path = folder / "server.log"
    command = [sys.executable, "-m", "workers.llama_server", "--port", str(port), *arguments]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}", process, log_path)

    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited:\n{log_path.read_text()}")
        try:
            return requests.get(f"{server.url}/v1/models", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_for(serving, timeout=120, interval=0.5)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=20)
