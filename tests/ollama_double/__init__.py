"""A protocol-faithful Ollama double for tests and benchmarks, written from the Ollama HTTP
API as the server implements it and as the official Python client parses it."""
