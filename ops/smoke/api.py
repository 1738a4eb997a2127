"""The deployment's REST API as the smoke test calls it.

Every call carries an `X-Request-ID` of the form `smoke-<run>-<n>`, so the audit scenario can
find exactly the entries this run caused. A 429 from the rate limiter is waited out (its
`Retry-After`, a few times at most): the default budget allows 10 calls a second per user, and
the smoke test should measure the deployment, not trip over its limiter.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from ops.smoke.outcomes import Failed

USER_AGENT = "ollamamax-smoke/1"
MAX_RATE_LIMIT_WAIT_S = 10.0
RATE_LIMIT_RETRIES = 4


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: requests.Response) -> str | None:
    """The `error.code` of our JSON error shape, if the body has one."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict):
        return str(error.get("code"))
    return None


def describe(response: requests.Response) -> str:
    """`401 invalid_credentials: The username or password is incorrect.` and the like."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{response.status_code} {error.get('code')}: {error.get('message')}"
    return f"{response.status_code} {str(body)[:200]}"


def unreachable(method: str, path: str, error: requests.RequestException) -> Failed:
    """A short reason for a call that got no answer (requests' own messages run long)."""
    text = str(error)
    if isinstance(error, requests.exceptions.SSLError):
        why = "TLS failed (" + text.rsplit("SSL: ", 1)[-1].split(")")[0].strip("'\" ") + ")"
        if "CERTIFICATE_VERIFY_FAILED" in text:
            why += "; give the deployment's CA with --ca-bundle"
    elif isinstance(error, requests.Timeout):
        why = "no answer in time (--timeout)"
    elif "Connection refused" in text:
        why = "connection refused"
    elif "Name or service not known" in text or "nodename nor servname" in text:
        why = "unknown host"
    else:
        why = f"{type(error).__name__}: {text[:200]}"
    return Failed(f"{method} {path}: {why}")


def retry_after_s(response: requests.Response) -> float | None:
    """How long a rate-limited call should wait, or None when waiting would not help."""
    if response.status_code != 429 or error_code(response) == "account_locked":
        return None
    try:
        wait = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        wait = 1.0
    return max(0.2, wait) if wait <= MAX_RATE_LIMIT_WAIT_S else None


class Api:
    def __init__(
        self, base_url: str, run_id: str, timeout_s: float, ca_bundle: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.run_id = run_id
        self.timeout = (min(10.0, timeout_s), timeout_s)  # connect, read
        self.http = requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        # Per call, not on the session: requests lets REQUESTS_CA_BUNDLE override a session's.
        self.verify: str | bool = ca_bundle or True
        self._numbers = itertools.count(1)
        self.server_time: datetime | None = None  # from the first answer's Date header
        self.calls = 0
        self.rate_limited = 0

    def next_request_id(self) -> str:
        return f"smoke-{self.run_id}-{next(self._numbers)}"

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> requests.Response:
        headers = {"X-Request-ID": self.next_request_id(), **(bearer(token) if token else {})}
        retries = 0
        while True:
            self.calls += 1
            try:
                response = self.http.request(
                    method,
                    self.base_url + path,
                    headers=headers,
                    json=json,
                    params=params,
                    timeout=self.timeout,
                    verify=self.verify,
                )
            except requests.RequestException as error:
                raise unreachable(method, path, error) from None
            self._note_server_time(response)
            wait = retry_after_s(response)
            if wait is None or retries == RATE_LIMIT_RETRIES:
                return response
            retries += 1
            self.rate_limited += 1
            time.sleep(wait)

    def call(
        self,
        method: str,
        path: str,
        *,
        expect: int = 200,
        token: str | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> requests.Response:
        """`request`, failing the scenario unless the status is `expect`."""
        response = self.request(method, path, token=token, json=json, params=params)
        if response.status_code != expect:
            raise Failed(f"{method} {path} answered {describe(response)} (wanted {expect})")
        return response

    def get_plain(self, path: str, token: str | None) -> requests.Response:
        """A GET with no request id, no retry: what a Prometheus scraper sends."""
        try:
            return self.http.get(
                self.base_url + path,
                headers=bearer(token) if token else {},
                timeout=self.timeout,
                verify=self.verify,
            )
        except requests.RequestException as error:
            raise unreachable("GET", path, error) from None

    def _note_server_time(self, response: requests.Response) -> None:
        if self.server_time is None and response.headers.get("Date"):
            with contextlib.suppress(TypeError, ValueError):
                self.server_time = parsedate_to_datetime(response.headers["Date"])

    def close(self) -> None:
        self.http.close()
