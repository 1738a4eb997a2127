"""One webhook POST, with the SSRF rule enforced on the socket itself.

httpcore is given a network backend that resolves the host, refuses any internal address
(web/webhooks/guard.py) and connects to the address it checked, so what is checked is what
is reached, whatever DNS answers by then. No redirect is followed (httpcore never does: a
3xx is a failed attempt), no proxy is read from the environment, no connection is kept
alive, and the body of the answer is not read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpcore

from web.webhooks.guard import AllowList, WebhookRefused, as_address, parse, refusal, resolve


class GuardedBackend(httpcore.SyncBackend):
    def __init__(self, allowed: AllowList) -> None:
        self.allowed = allowed

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve(host, port)
        for address in addresses:
            reason = refusal(address, host, self.allowed)
            if reason:
                raise WebhookRefused(reason)
        stream = super().connect_tcp(
            str(addresses[0]), port, timeout, local_address, socket_options
        )
        # The address the socket is connected to, as the kernel has it.
        peer = stream.get_extra_info("server_addr")
        reason = refusal(as_address(peer[0]), host, self.allowed) if peer else "no peer address"
        if reason:
            stream.close()
            raise WebhookRefused(reason)
        return stream


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    error: str | None
    duration_ms: int


class Sender:
    """POSTs for one deliverer process; safe to share between its threads."""

    def __init__(self, allowed: AllowList, connect_timeout_s: float, read_timeout_s: float) -> None:
        self.timeouts = {
            "connect": connect_timeout_s,
            "read": read_timeout_s,
            "write": read_timeout_s,
            "pool": connect_timeout_s,
        }
        self.pool = httpcore.ConnectionPool(
            network_backend=GuardedBackend(allowed),
            max_connections=None,
            max_keepalive_connections=0,
            retries=0,
        )

    def post(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        sent: dict[bytes | str, bytes | str] = {
            "content-type": "application/json",
            "user-agent": "OllamaMax",
        }
        sent.update(headers)
        started = time.monotonic()
        status, error = None, None
        try:
            parse(url)  # the URL was checked at submission; the settings may have changed since
            with self.pool.stream(
                "POST",
                url,
                headers=sent,
                content=body,
                extensions={"timeout": self.timeouts},
            ) as response:
                status = response.status
            if 300 <= status < 400:
                error = "redirects are not followed"
            elif not 200 <= status < 300:
                error = f"the receiver answered {status}"
        except WebhookRefused as refused:
            error = f"refused: {refused}"
        except httpcore.TimeoutException as timeout:
            error = f"timed out: {type(timeout).__name__}"
        except (
            httpcore.NetworkError,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
            OSError,
        ) as failure:
            error = f"{type(failure).__name__}: {failure}"[:500]
        return Answer(status, error, int((time.monotonic() - started) * 1000))

    def close(self) -> None:
        self.pool.close()
