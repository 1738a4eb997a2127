"""A protocol-faithful Ollama double for tests and benchmarks (see ../../../shared/reference)."""
