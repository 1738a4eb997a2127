"""Which webhook URLs pass (web/webhooks/guard.py), and the signature checked by an
independent Standard Webhooks implementation (the `standardwebhooks` package)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from config.settings import build_settings
from db.webhooks import new_secret
from web.webhooks import guard
from web.webhooks.deliverer import backoff
from web.webhooks.guard import AllowList, WebhookRefused
from web.webhooks.signing import signed_headers

NOBODY = AllowList.parse([])


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",  # noqa: S104 - an address refused, not bound
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    assert guard.internal(ipaddress.ip_address(address))
    url = f"http://[{address}]/h" if ":" in address else f"http://{address}/h"
    with pytest.raises(WebhookRefused, match="internal address"):
        guard.check(url, NOBODY)


@pytest.mark.parametrize("address", ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    url = f"https://[{address}]:8443/h" if ":" in address else f"https://{address}/h?x=1"
    assert guard.check(url, NOBODY) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://1.1.1.1/h", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://1.1.1.1/", "http or https"),
        ("http://user:secret@1.1.1.1/h", "credentials"),
        ("http://user@1.1.1.1/h", "credentials"),
        ("http:///h", "no host"),
        ("http://1.1.1.1:99999/h", "malformed"),
        ("http://1.1.1.1/a b", "spaces or control"),
        ("http://1.1.1.1/\r\nX-Injected: 1", "spaces or control"),
        ("http://1.1.1.1/" + "a" * 2040, "longer than 2048"),
        ("http://no-such-host.invalid/h", "does not resolve"),
    ],
)
def test_malformed_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(WebhookRefused, match=reason):
        guard.check(url, NOBODY)


def test_the_allow_list_takes_addresses_ranges_and_names() -> None:
    allowed = AllowList.parse(["127.0.0.1", "10.1.0.0/16", "hooks.internal"])
    assert guard.check("http://127.0.0.1:8080/h", allowed)
    assert guard.check("http://10.1.200.3/h", allowed)
    with pytest.raises(WebhookRefused):
        guard.check("http://10.2.0.1/h", allowed)
    address = ipaddress.ip_address("10.9.9.9")
    assert guard.refusal(address, "hooks.internal", allowed) is None
    assert guard.refusal(address, "HOOKS.internal.", allowed) is None
    assert guard.refusal(address, "other.internal", allowed) is not None


def test_the_setting_refuses_a_malformed_entry() -> None:
    settings = build_settings({"webhook_allowed_hosts": "127.0.0.1, 10.0.0.0/8,Hooks.Example"})
    assert settings.webhook_allowed_hosts == ["127.0.0.1", "10.0.0.0/8", "hooks.example"]
    with pytest.raises(ValueError, match="webhook_allowed_hosts"):
        build_settings({"webhook_allowed_hosts": "10.0.0.300/8"})
    with pytest.raises(ValueError, match="webhook_allowed_hosts"):
        build_settings({"webhook_allowed_hosts": "bad host!"})


def test_signatures_verify_with_an_independent_implementation() -> None:
    secret = new_secret()
    body = b'{"type":"inference.completed","data":{"id":"x"}}'
    timestamp = int(datetime.now(UTC).timestamp())
    headers = signed_headers(secret, "msg_abc", timestamp, body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == {
        "type": "inference.completed",
        "data": {"id": "x"},
    }
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, headers)  # another account's secret
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_other"})


def test_backoff_doubles_within_its_jitter_and_stops_at_its_cap() -> None:
    for attempt, bound in [(1, 5.0), (2, 10.0), (3, 20.0), (12, 3600.0)]:
        waits = [backoff(attempt, 5.0, 3600.0) for _ in range(200)]
        assert all(bound / 2 <= wait <= bound for wait in waits)
        assert len(set(waits)) > 100  # jittered
