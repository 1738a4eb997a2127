"""Pydantic request and response schemas (also the source of the OpenAPI document)."""
