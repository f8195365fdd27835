"""The SSRF guard for webhook URLs: a receiver must be a public http(s) address unless the operator allows more.

A URL's host is resolved and *every* address it resolves to is checked: loopback, private, link-local,
multicast, reserved, unspecified and other non-global addresses are refused, and an IPv4-mapped IPv6 address
(``::ffff:127.0.0.1``) is judged by the IPv4 address inside it. ``INFERNO_WEBHOOK_ALLOWED_NETWORKS`` (CIDRs)
lets chosen networks through. The check runs at submit (a 400 naming the field) and again at every delivery,
where :func:`guarded_session` connects only to the addresses it has just vetted, so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import connection as urllib3_connection

from inferno_jobs.attempt_deadline import DeadlineConnection
from inferno_jobs.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list]


class WebhookUrlRefused(InvalidRequest):
    """Raised when a webhook URL is not http(s) or resolves to an address the SSRF guard refuses."""


class WebhookHostUnresolved(WebhookUrlRefused):
    """Raised when a webhook URL's host name does not resolve (at delivery time this may be transient)."""


def _why_refused(ip: IPAddress) -> str | None:
    """Why ``ip`` may not receive webhooks, or None when it is a public unicast address."""
    for attribute, kind in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                            ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                            ("is_reserved", "reserved"), ("is_private", "private")):
        if getattr(ip, attribute):
            return kind
    if not ip.is_global:  # shared address space (100.64/10), documentation ranges and the like
        return "non-global"
    return None


class NetworkGuard:
    """Decides which addresses webhooks may be sent to: public ones, plus the ``allowed`` networks."""

    def __init__(self, allowed: Iterable[str] = (), resolve: Resolver | None = None):
        try:
            self.allowed = [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in allowed if cidr.strip()]
        except ValueError as exc:
            raise ValueError(f"INFERNO_WEBHOOK_ALLOWED_NETWORKS: {exc}") from exc
        self._resolve = resolve

    @classmethod
    def from_settings(cls, settings) -> "NetworkGuard":
        """The guard of a deployment (``webhook_allowed_networks``)."""
        return cls(settings.webhook_allowed_networks)

    def _is_allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allowed)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` is refused, or None when webhooks may go there."""
        mapped = getattr(ip, "ipv4_mapped", None)
        if self._is_allowed(ip) or (mapped is not None and self._is_allowed(mapped)):
            return None
        judged = mapped if mapped is not None else ip  # ::ffff:127.0.0.1 reaches 127.0.0.1: judge it as that
        reason = _why_refused(judged)
        if reason:
            return f"{reason} address {ip}"
        # 6to4 (2002:a9fe:a9fe::) and Teredo carry an IPv4 address a relay delivers to: judge that one too.
        teredo = getattr(ip, "teredo", None)
        for inner in (getattr(ip, "sixtofour", None), teredo[1] if teredo else None):
            if inner is not None and not self._is_allowed(inner) and _why_refused(inner):
                return f"{_why_refused(inner)} address {inner} (inside {ip})"
        return None

    def resolve(self, host: str, port: int, field: str = "webhook.url") -> list[IPAddress]:
        """Every address of ``host``; raises :class:`WebhookUrlRefused` if any of them is refused.

        Raises :class:`WebhookHostUnresolved` when the name does not resolve.
        """
        resolve = self._resolve or socket.getaddrinfo
        try:
            infos = resolve(host, port, 0, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise WebhookHostUnresolved(f"{field}: host {host!r} does not resolve ({exc})",
                                        details={"field": field}) from exc
        addresses: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])  # drop an IPv6 zone id
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise WebhookHostUnresolved(f"{field}: host {host!r} does not resolve", details={"field": field})
        for ip in addresses:
            reason = self.refusal(ip)
            if reason:
                raise WebhookUrlRefused(
                    f"{field}: {host!r} resolves to a {reason}; webhooks may only go to public addresses "
                    f"unless INFERNO_WEBHOOK_ALLOWED_NETWORKS allows it", details={"field": field})
        return addresses

    def check_url(self, url: str, field: str = "webhook.url") -> list[IPAddress]:
        """Check a webhook URL (scheme and every address of its host); returns the vetted addresses."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise WebhookUrlRefused(f"{field}: {exc}", details={"field": field}) from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookUrlRefused(f"{field} must be an http or https URL with a host", details={"field": field})
        return self.resolve(parts.hostname, port, field)


# -- connections that only reach vetted addresses -------------------------------------------------------------

class _GuardedConnectionMixin:
    guard: NetworkGuard

    def _new_conn(self):
        # Resolve and vet here, then connect to the vetted address itself: the name is never resolved twice.
        addresses = self.guard.resolve(self._dns_host, self.port)
        error: OSError | None = None
        for ip in addresses:
            try:
                return urllib3_connection.create_connection(
                    (str(ip), self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except OSError as exc:
                error = exc
        from urllib3.exceptions import NewConnectionError

        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")


def guarded_session(guard: NetworkGuard) -> requests.Session:
    """A ``requests`` session whose connections go only to addresses ``guard`` accepts, and whose requests
    :func:`inferno_jobs.attempt_deadline.deadline` can bound as a whole.

    Environment proxies are ignored (a proxy would be the address checked, not the receiver).
    """
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, DeadlineConnection, HTTPConnection),
                     {"guard": guard})
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, DeadlineConnection, HTTPSConnection),
                      {"guard": guard})
    pools = {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
