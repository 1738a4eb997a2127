"""What scenarios share: the admin's login, the model, an API key for the clients, and the
record of everything this run made, so that `cleanup` can remove it whatever happened."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from ops.smoke.api import Api, describe
from ops.smoke.outcomes import Failed, Skipped
from ops.smoke.ws import Socket

TERMINAL = {"completed", "failed", "cancelled"}


@dataclass(frozen=True)
class Options:
    base_url: str
    admin_email: str
    admin_password: str
    model: str | None = None
    timeout_s: float = 60.0
    metrics_token: str | None = None
    ca_bundle: str | None = None  # PEM file of the CA that signed an https deployment's cert


@dataclass
class Login:
    access_token: str
    refresh_token: str
    user_id: str = ""
    username: str = ""
    role: str = ""
    renew_at: float = float("inf")  # monotonic time after which to refresh the access token


@dataclass
class Cleanup:
    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def renew_at(token_pair: dict[str, Any]) -> float:
    """When to refresh a login: well before its access token expires."""
    lifetime = float(token_pair.get("expires_in") or 900)
    return time.monotonic() + max(lifetime * 0.5, lifetime - 60)


def generates(model: dict[str, Any]) -> bool:
    """Whether a listed model can answer a chat: its engine (or operator) says it completes,
    or says nothing; an embedding-only model cannot."""
    shown = (model.get("parameters") or {}).get("show") or {}
    capabilities = shown.get("capabilities")
    return not isinstance(capabilities, list) or "completion" in capabilities


def canonical_model(name: str) -> str:
    """`llama3.2` -> `llama3.2:latest`, as the registry names it."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class Context:
    def __init__(self, options: Options, run_id: str) -> None:
        self.options = options
        self.run_id = run_id
        self.api = Api(options.base_url, run_id, options.timeout_s, options.ca_bundle)
        # The same trust for the four clients: requests, websocket-client, ollama, openai.
        self.tls = (
            ssl.create_default_context(cafile=options.ca_bundle) if options.ca_bundle else None
        )
        self.admin: Login | None = None
        self.expected_audit: list[tuple[str, str]] = []  # (action, request id)
        self.keys: dict[str, str] = {}  # id -> secret, every key this run created
        self.revoked: set[str] = set()
        self.sessions: dict[str, str] = {}  # label -> latest access token of a login to end
        self.config_revert: dict[str, Any] | None = None  # body that undoes a config change
        self.jobs: list[str] = []
        self._models: list[dict[str, Any]] | None = None
        self._models_error: str | None = None
        self._client_key: str | None = None
        self.used_model: str | None = None
        self.lifecycle_key: tuple[str, str] | None = None  # (id, secret) of keys.create's key

    # -- shared resources ------------------------------------------------------------------

    def admin_token(self) -> str:
        if self.admin is None:
            raise Skipped("needs auth.login")
        if time.monotonic() > self.admin.renew_at:
            self._renew_admin(self.admin)
        return self.admin.access_token

    def _renew_admin(self, login: Login) -> None:
        """A slow run can outlive the access token (ACCESS_TOKEN_TTL_S): rotate the pair."""
        response = self.api.call("POST", "/api/v1/auth/refresh", token=login.refresh_token)
        body = response.json()
        login.access_token, login.refresh_token = body["access_token"], body["refresh_token"]
        login.renew_at = renew_at(body)
        self.sessions["admin"] = login.access_token

    def socket(self, path: str) -> Socket:
        """A WebSocket to `path` with the admin's token."""
        return Socket(
            self.options.base_url, path, self.admin_token(), self.options.timeout_s, tls=self.tls
        )

    def deadline(self) -> float:
        return time.monotonic() + self.options.timeout_s

    def expect_audit(self, action: str, response: requests.Response) -> None:
        """The audit trail must show `action` for the call that gave `response`."""
        request_id = response.request.headers.get("X-Request-ID")
        if isinstance(request_id, str):
            self.expected_audit.append((action, request_id))

    def available_models(self) -> list[dict[str, Any]]:
        """The fleet's available models by name (fetched once)."""
        if self._models is None and self._models_error is None:
            response = self.api.request(
                "GET",
                "/api/v1/models/",
                token=self.admin_token(),
                params={"status": "available", "sort": "name", "per_page": 100},
            )
            if response.status_code == 200:
                self._models = list(response.json()["items"])
            else:
                self._models_error = describe(response)
        if self._models is None:
            raise Failed(f"GET /api/v1/models/ answered {self._models_error}")
        return self._models

    def model(self) -> str:
        """--model, else the first available model of the fleet that generates; Skipped when
        there is none."""
        if self.used_model is None and self.options.model:
            self.used_model = self.options.model
        if self.used_model is None:
            try:
                models = self.available_models()
            except Failed as failure:
                raise Skipped(f"needs a model ({failure})") from None
            generating = [model for model in models if generates(model)]
            if not generating:
                raise Skipped("needs a model that generates (the fleet lists none available)")
            self.used_model = str(generating[0]["name"])
        return self.used_model

    def create_key(self, name: str, scopes: list[str]) -> tuple[str, str, requests.Response]:
        response = self.api.call(
            "POST",
            "/api/v1/users/api-keys",
            expect=201,
            token=self.admin_token(),
            json={
                "current_password": self.options.admin_password,
                "name": f"smoke-{self.run_id}-{name}",
                "scopes": scopes,
                "expires_in_days": 1,  # even a key cleanup could not revoke dies tomorrow
            },
        )
        body = response.json()
        self.keys[body["id"]] = body["key"]
        self.expect_audit("api_key.created", response)
        return body["id"], body["key"], response

    def client_key(self) -> str:
        """An `inference` key for the official clients (made once, revoked by cleanup)."""
        if self._client_key is None:
            try:
                _, self._client_key, _ = self.create_key("clients", ["inference"])
            except Failed as failure:
                raise Skipped(f"needs an API key ({failure})") from None
        return self._client_key

    # -- cleanup ---------------------------------------------------------------------------

    def cleanup(self) -> Cleanup:
        """Undo what the run made; each step is tried even when an earlier one failed."""
        report = Cleanup()
        for step in (self._revert_config, self._cancel_jobs, self._revoke_keys, self._logout):
            try:
                step(report)
            except Exception as error:  # keep going: the next step may still succeed
                report.problems.append(f"{step.__name__[1:]}: {type(error).__name__}: {error}")
        return report

    def _revert_config(self, report: Cleanup) -> None:
        if self.config_revert is None:
            return
        response = self.api.request(
            "PUT", "/api/v1/system/config", token=self.admin_token(), json=self.config_revert
        )
        if response.status_code == 200:
            report.done.append(f"reverted config {sorted(self.config_revert)}")
            self.config_revert = None
        else:
            report.problems.append(f"config revert {self.config_revert}: {describe(response)}")

    def _cancel_jobs(self, report: Cleanup) -> None:
        for job_id in self.jobs:
            path = f"/api/v1/inference/requests/{job_id}"
            response = self.api.request("GET", path, token=self.admin_token())
            if response.status_code == 200 and response.json()["status"] not in TERMINAL:
                cancel = self.api.request("POST", path + "/cancel", token=self.admin_token())
                if cancel.status_code in (202, 409):
                    report.done.append(f"cancelled job {job_id}")
                else:
                    report.problems.append(f"cancel job {job_id}: {describe(cancel)}")

    def _revoke_keys(self, report: Cleanup) -> None:
        for key_id in self.keys:
            if key_id in self.revoked:
                continue
            response = self.api.request(
                "DELETE", f"/api/v1/users/api-keys/{key_id}", token=self.admin_token()
            )
            if response.status_code in (204, 404):
                self.revoked.add(key_id)
                report.done.append(f"revoked API key {key_id}")
            else:
                report.problems.append(f"revoke API key {key_id}: {describe(response)}")

    def _logout(self, report: Cleanup) -> None:
        for label, token in list(self.sessions.items()):
            response = self.api.request("POST", "/api/v1/users/logout", token=token)
            # 401: the login had already ended (expired or revoked): nothing is left.
            if response.status_code in (204, 401):
                del self.sessions[label]
                report.done.append(f"logged out ({label})")
            else:
                report.problems.append(f"logout ({label}): {describe(response)}")
