"""Container health probes for docker/compose.yaml: standard library only, so every service
of the image can run them without curl.

    python docker/healthcheck.py http URL            # answers 2xx within the timeout
    python docker/healthcheck.py tcp HOST PORT       # accepts a TCP connection
    python docker/healthcheck.py fresh GLOB SECONDS  # a matching file changed that recently

Exit status 0 is healthy, 1 is not (with the reason on stderr).
"""

from __future__ import annotations

import glob
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Callable

TIMEOUT_S = 4.0


def http(url: str) -> str | None:
    if not url.startswith(("http://", "https://")):
        return f"not an http(s) URL: {url}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310
            status = int(response.status)
    except OSError as error:  # URLError and HTTPError (4xx/5xx) included
        return f"{url}: {error}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def tcp(host: str, port: str) -> str | None:
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT_S):
            return None
    except OSError as error:
        return f"{host}:{port}: {error}"


def fresh(pattern: str, seconds: str) -> str | None:
    """Beat rewrites its schedule file every few minutes; a stale one means it is stuck."""
    paths = glob.glob(pattern)
    if not paths:
        return f"nothing matches {pattern}"
    age = time.time() - max(os.path.getmtime(path) for path in paths)
    return None if age <= float(seconds) else f"{pattern} last changed {age:.0f}s ago"


# name -> (probe, number of arguments)
PROBES: dict[str, tuple[Callable[..., str | None], int]] = {
    "http": (http, 1),
    "tcp": (tcp, 2),
    "fresh": (fresh, 2),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in PROBES or len(argv) - 1 != PROBES[argv[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    probe, _ = PROBES[argv[0]]
    problem = probe(*argv[1:])
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
