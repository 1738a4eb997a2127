"""Which webhook URLs OllamaMax will POST to (docs/webhooks.md, "SSRF").

A URL is http(s), at most URL_MAX characters, without credentials, and its host must not
resolve to an address inside our own networks: private, loopback, link-local (cloud
metadata lives at 169.254.169.254), multicast, reserved, shared or unspecified. The check
runs at submission (a 400) and again at delivery against the very address the socket
connects to (web/webhooks/sender.py), so a name that resolves differently by then (DNS
rebinding) gets nowhere. WEBHOOK_ALLOWED_HOSTS lists host names, addresses or CIDR ranges
that may be reached anyway.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from web.errors import BadRequest
from web.extensions import current_settings

URL_MAX = 2048
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(ValueError):
    """The URL may not be used as a webhook; the message says why, for the caller."""


@dataclass(frozen=True)
class AllowList:
    """WEBHOOK_ALLOWED_HOSTS, parsed: host names, and networks."""

    names: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        names, networks = set(), []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.lower())
        return cls(frozenset(names), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def allows_address(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def internal(address: Address) -> bool:
    """An address we must not be made to reach: anything not globally routable, and
    multicast. An IPv4 address wrapped in IPv6 (::ffff:10.0.0.1) is judged unwrapped."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def refusal(address: Address, host: str, allowed: AllowList) -> str | None:
    """Why `host` may not be reached at `address`, or None when it may."""
    if allowed.allows_name(host) or allowed.allows_address(address) or not internal(address):
        return None
    return f"the webhook's host resolves to an internal address ({address})"


def parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable-looking URL; raises WebhookRefused."""
    if len(url) > URL_MAX:
        raise WebhookRefused(f"the webhook URL is longer than {URL_MAX} characters")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise WebhookRefused("the webhook URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookRefused("the webhook URL is malformed") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("the webhook URL must be http or https")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("the webhook URL must not carry credentials")
    if not parts.hostname:
        raise WebhookRefused("the webhook URL has no host")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (a literal address is itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise WebhookRefused(f"the webhook's host {host!r} does not resolve") from None
    return list(dict.fromkeys(as_address(str(info[4][0])) for info in infos))


def as_address(text: str) -> Address:
    """An address as a socket reports it (an IPv6 one may carry a zone: fe80::1%eth0)."""
    return ipaddress.ip_address(text.split("%")[0])


def check(url: str, allowed: AllowList) -> str:
    """The URL if OllamaMax may POST to it now; raises WebhookRefused with the reason. Every
    address the host resolves to must be acceptable: one internal address among public
    ones is as good a way in as any."""
    _, host, port = parse(url)
    for address in resolve(host, port):
        reason = refusal(address, host, allowed)
        if reason:
            raise WebhookRefused(reason)
    return url


def checked_webhook(url: str | None) -> str | None:
    """A webhook URL a caller gave (a job's, a key's default), checked against this
    process's WEBHOOK_ALLOWED_HOSTS; a refusal is a 400 `invalid_webhook_url`, in the
    shape of whichever door asked."""
    if url is None:
        return None
    try:
        return check(url, AllowList.parse(current_settings().webhook_allowed_hosts))
    except WebhookRefused as refused:
        raise BadRequest(f"{refused}.", code="invalid_webhook_url") from None
