"""An httpx transport over urllib3, for the engine's generation streams.

The official `ollama` client speaks httpx, and httpx's own transport (httpcore, parsing HTTP
in pure Python with h11) is most of what reading a stream costs the worker. urllib3 reads a
chunked body through the standard library's buffered socket file instead: one 20-token job
read through the client took 3.4 ms of CPU over httpx's transport and 2.8 over this one, the
bare chunked read alone 1.2 (`python -m bench.engine_client`; docs/benchmarks.md, "The
engine's stream over urllib3"). The client, its requests and its parsing stay the official
client's; only the bytes on the wire go through urllib3, by httpx's documented extension
point (`httpx.Client(transport=...)`).

What httpx's transport did and callers rely on is kept:
- The faults the job runner tells apart (workers/engines/ollama.py): a connection refused or
  failing TLS is `httpx.ConnectError`, no connection in time `httpx.ConnectTimeout`, a
  request body the engine stops taking `httpx.WriteTimeout`, a silent answer
  `httpx.ReadTimeout`; a connection reset or an answer cut short is
  `httpx.RemoteProtocolError` (httpx said `ReadError` for some of these: both are the same
  engine fault). One difference: a TLS handshake that stalls (an `https://` engine) is a
  `ReadTimeout` here, as urllib3 reports it, where httpx said `ConnectTimeout`.
- Timeouts per socket operation, not deadlines: the read timeout for each read of the
  answer, the connect timeout for the connection and for each 16 KiB block of the request
  body (httpx's write timeout is not used: urllib3 sends with the connect one).
- Closing a response before its end closes its connection: Ollama stops generating when
  its client goes away, and a connection with unread data must not be used again.
- No retry, no redirect: a POST is sent once; the job runner decides what to try again.
- httpx's certificates (certifi, or SSL_CERT_FILE) for an `https://` engine.
- Proxies from the environment: httpx ignores them once given a transport, so an engine
  that the environment sends through a proxy keeps httpx's own transport
  (`environment_proxy`).
"""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import HTTPError as Urllib3Error

READ_SIZE = 64 * 1024  # the most one read of a body that is not chunked returns


@contextmanager
def _translated(request: httpx.Request) -> Iterator[None]:
    """urllib3's exceptions as the httpx ones httpx's own transport raises."""
    try:
        yield
    except NewConnectionError as error:  # a subclass of ConnectTimeoutError, for history
        raise httpx.ConnectError(str(error), request=request) from error
    except ConnectTimeoutError as error:
        raise httpx.ConnectTimeout(str(error), request=request) from error
    except ReadTimeoutError as error:
        raise httpx.ReadTimeout(str(error), request=request) from error
    except SSLError as error:
        raise httpx.ConnectError(str(error), request=request) from error
    except ProtocolError as error:
        if isinstance(error.args[-1], TimeoutError):  # only sending times out this way
            raise httpx.WriteTimeout(str(error), request=request) from error
        raise httpx.RemoteProtocolError(str(error), request=request) from error
    except (Urllib3Error, OSError) as error:
        raise httpx.ReadError(str(error), request=request) from error


class _Body(httpx.SyncByteStream):
    """A response body read as it arrives, each chunk as the engine sent it."""

    def __init__(self, response: urllib3.BaseHTTPResponse, request: httpx.Request) -> None:
        self._response, self._request = response, request
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        with _translated(self._request):
            if response.chunked:
                yield from response.read_chunked(decode_content=False)
            else:
                while data := response.read1(READ_SIZE, decode_content=False):
                    yield data
        self._complete = True

    def close(self) -> None:
        if not self._complete:
            # Left before its end: the rest of the answer would still arrive on this
            # connection, so it is closed, not pooled, and the engine stops generating.
            # (urllib3 closes it too once its reader is finalised; this does not wait.)
            self._response.close()
        self._response.release_conn()


class Urllib3Transport(httpx.BaseTransport):
    """Plain HTTP/1.1 over urllib3's connection pools: `pool_size` connections kept per
    engine (more are opened when needed, and closed after use)."""

    def __init__(self, *, pool_size: int) -> None:
        self._pools = urllib3.PoolManager(
            maxsize=pool_size,
            block=False,
            retries=False,  # a POST is sent once: the job runner decides what to try again
            ssl_context=httpx.create_ssl_context(),  # the trust store httpx's clients use
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        timeout = urllib3.Timeout(connect=timeouts.get("connect"), read=timeouts.get("read"))
        content = request.read()
        with _translated(request):
            response = self._pools.urlopen(
                request.method,
                str(request.url),
                # As a file, the body goes out a block at a time, each within the timeout;
                # as bytes it would be one send that must end within it (images are large).
                body=io.BytesIO(content) if content else None,
                headers=urllib3.HTTPHeaderDict(request.headers.multi_items()),
                redirect=False,
                timeout=timeout,
                preload_content=False,
                decode_content=False,
            )
        reason = (response.reason or "").encode()
        return httpx.Response(
            response.status,
            headers=list(response.headers.items()),
            stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    def close(self) -> None:
        self._pools.clear()


def environment_proxy(url: str) -> bool:
    """Whether the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, less NO_PROXY) sends
    requests for `url` through a proxy, as httpx's own transport would."""
    target = httpx.URL(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(target.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(target.host)
