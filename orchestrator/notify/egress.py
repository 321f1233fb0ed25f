"""Where a merchant webhook may go, and the HTTP client that takes it exactly there.

A webhook URL is set by ops for a merchant, and the worker POSTs signed order data to it from
inside Lunas's network. Three rules keep that POST going only where it was meant to:

* **Checked once, connected there.** The URL's host is resolved once per try
  (``resolve_endpoint``); in production every address must be public (not loopback, a private
  network, link-local such as the cloud metadata service, or otherwise reserved) unless
  ``LUNAS_WEBHOOK_ALLOW_PRIVATE``. The connection then goes to exactly those addresses
  (``pinned_to``): the client's network backend never resolves the name again, so a name whose
  answer changes between check and connect (DNS rebinding) cannot redirect it. The request
  still names the host: the ``Host`` header, TLS SNI and the certificate check are all on the
  name, never the address, and a kept-alive connection is reused only for the same name.
* **No proxy from the environment.** ``HTTP(S)_PROXY`` and ``ALL_PROXY`` are ignored
  (``trust_env=False``): whoever sets the worker's environment does not get to see merchants'
  traffic.
* **TLS in production.** ``http://`` is refused unless ``LUNAS_WEBHOOK_ALLOW_HTTP``
  (``EgressPolicy.https_only``); the signature does not hide the order data it signs.

Errors (all ``EgressRefused``, a ``ValueError``) name the address or the rule, never the URL,
which may carry the merchant's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpcore
import httpx

from orchestrator.tls import default_trust


class EgressRefused(ValueError):
    """A webhook URL or the address it resolves to is one Lunas will not send to."""


@dataclass(frozen=True, kw_only=True)
class EgressPolicy:
    """Where merchant webhooks may go (``Settings.webhook_egress``)."""

    public_only: bool = False
    """Refuse a host that is, or resolves to, a non-public address (production)."""
    https_only: bool = False
    """Refuse ``http://`` (production)."""


OPEN = EgressPolicy()
"""Development and tests: the demo's and tests' receivers listen on http://127.0.0.1."""


def url_problem(url: httpx.URL, policy: EgressPolicy) -> str | None:
    """Why ``policy`` refuses ``url`` before any lookup (its scheme; a host that is a
    non-public address literal or ``localhost``), or None."""
    if policy.https_only and url.scheme != "https":
        return ("the webhook URL must use https:// in production "
                "(LUNAS_WEBHOOK_ALLOW_HTTP lets it use http://)")
    if not policy.public_only:
        return None
    host = url.host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return "the webhook host is localhost, not a public address"
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if not _public(address):
            return _not_public(address)
    return None


async def resolve_endpoint(url: httpx.URL, policy: EgressPolicy) -> tuple[str, ...]:
    """The addresses a try to ``url`` connects to, resolved once and allowed by ``policy``."""
    if problem := url_problem(url, policy):
        raise EgressRefused(problem)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            url.raw_host.decode("ascii"), url.port or (443 if url.scheme == "https" else 80),
            type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EgressRefused(f"webhook host does not resolve ({exc.strerror})") from exc
    addresses = list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))
    if not addresses:
        raise EgressRefused("webhook host does not resolve (no address)")
    if policy.public_only:
        for text in addresses:
            address = ipaddress.ip_address(text.partition("%")[0])
            if not _public(address):
                raise EgressRefused(_not_public(address))
    return tuple(addresses)


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global


def _not_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return (f"webhook host resolves to {address}, not a public address "
            "(LUNAS_WEBHOOK_ALLOW_PRIVATE lets it)")


@dataclass(frozen=True, kw_only=True)
class _Pin:
    host: str
    addresses: tuple[str, ...]


_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("webhook_pin", default=None)


@contextlib.contextmanager
def pinned_to(host: str, addresses: tuple[str, ...]) -> Iterator[None]:
    """Within this block (this task), a ``webhook_client`` connection to ``host`` goes to
    ``addresses`` (in order, the first that answers) and nowhere else."""
    token = _PIN.set(_Pin(host=host.lower(), addresses=addresses))
    try:
        yield
    finally:
        _PIN.reset(token)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the pinned addresses of the name asked for; refuses any other name (a
    connection the handler did not check), so it fails closed."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _PIN.get()
        if pin is None or pin.host != host.lower():
            raise httpcore.ConnectError("webhook host was not checked before connecting")
        last: Exception = httpcore.ConnectError("webhook host has no address")
        for address in pin.addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last

    async def connect_unix_socket(
        self, path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks never go to a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=_PinnedBackend())


def webhook_client(
    timeout: timedelta, *, verify: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """The client the merchant webhook handler POSTs with: it connects only inside
    ``pinned_to``, ignores proxy environment variables and follows no redirect (a signed POST
    goes exactly where the merchant configured it). ``verify``: the CAs to trust (tests)."""
    context = verify if verify is not None else default_trust(from_env=False)
    return httpx.AsyncClient(
        transport=_PinnedTransport(context, httpx.Limits()), trust_env=False,
        timeout=timeout.total_seconds(), follow_redirects=False)
