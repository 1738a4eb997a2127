"""A smoke test operators run against any OllamaMax deployment, over its public API only.

`python -m ops.smoke --base-url URL --admin-email EMAIL --admin-password PW [--model NAME]
[--timeout 60] [--json]` runs the scenarios in `ops/smoke/scenarios` in order, prints one
PASS/FAIL/SKIP line each and a summary, and removes what it made (API keys, logins, config
changes, unfinished jobs) even when a scenario fails. It speaks HTTP and WebSocket only
(requests, websocket-client, the official ollama and openai clients): nothing here may import
the server's packages (web, workers, db, config), because it runs against remote deployments.
"""
