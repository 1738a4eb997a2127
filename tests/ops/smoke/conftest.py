"""The pipeline suite's real processes (the Ollama double, `python -m workers run`), shared
with the smoke command's test. Imported, not redefined: one definition of each. Here they
take the place of tests/ops/conftest.py's `double`, which serves the PgBouncer stack."""

from __future__ import annotations

from tests.pipeline.conftest import broker, double, pipeline_env, start_worker

__all__ = ["broker", "double", "pipeline_env", "start_worker"]
