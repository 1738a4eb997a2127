"""Operator tools: run the stack locally (`python -m ops.supervisor`, what `make run` runs) and
check a deployment end to end (`python -m ops.smoke`).

They sit above the product packages: they may use `config`, `db`, `workers` and `web`, and
nothing in those packages imports them. The smoke tool uses none of them: it speaks only HTTP
and WebSocket, so it runs against remote deployments from any checkout.
"""
