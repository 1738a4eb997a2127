"""The pipeline suite's real processes (the Ollama double, `python -m workers run`), shared
with the smoke command's test. Imported, not redefined: one definition of each."""

from __future__ import annotations

from tests.pipeline.conftest import double, pipeline_env, start_worker

__all__ = ["double", "pipeline_env", "start_worker"]
