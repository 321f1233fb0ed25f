"""Where a merchant webhook goes: exactly the address Lunas checked, over no proxy.

The merchant's endpoint is a real socket on loopback. Names are answered by a stand-in for DNS
(``socket.getaddrinfo``, which every lookup in the process goes through): a test cannot change
the machine's resolver, and a rebinding attack is precisely a resolver whose answer changes."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.domain.events import ORDER_PAID
from orchestrator.domain.ids import new_id
from orchestrator.notify.delivery import MerchantWebhookHandler
from orchestrator.notify.egress import EgressPolicy, webhook_client
from orchestrator.outbox.relay import OutboxEvent
from orchestrator.settings import DatabaseSettings, Settings
from orchestrator.store.engine import create_engine
from orchestrator.store.tables import merchants
from tests.e2e.test_checkout_to_webhook import WebhookReceiver

SECRET = "whsec_egress_test_0123456789"
TIMEOUT = timedelta(seconds=5)
NOWHERE = "224.0.1.1"
"""A global address (``ipaddress`` says so) that no TCP connection reaches: a multicast group.
It stands for the merchant's public server, so these tests contact nobody outside."""


@dataclass
class Resolver:
    """Names this test answers for: each lookup takes the next answer; the last one repeats."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[Resolver]:
    resolver = Resolver()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in resolver.answers:
            return real(host, port, *args, **kwargs)
        resolver.lookups.append(name)
        queue = resolver.answers[name]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        if ":" in address:
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                     (address, int(port), 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (address, int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield resolver  # monkeypatch puts the real resolver back


@pytest.fixture(scope="module")
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    e = create_engine(DatabaseSettings(url=pg_url, pool_size=2))
    yield e
    await e.dispose()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def add_merchant(engine: AsyncEngine, webhook_url: str) -> str:
    merchant_id = new_id("mch")
    async with engine.begin() as conn:
        await conn.execute(merchants.insert().values(
            id=merchant_id, name="Toko Egress", webhook_url=webhook_url, webhook_secret=SECRET,
            created_at=datetime.now(UTC)))
    return merchant_id


async def deliver(handler: MerchantWebhookHandler, merchant: str) -> str | None:
    """One try; the error the relay would record, or None when delivered."""
    try:
        await handler(OutboxEvent(
            id=0, event_id=new_id("evt"), event_type=ORDER_PAID, aggregate_id="ord_1",
            merchant_id=merchant, payload={"order_id": "ord_1"}, attempts=1,
            created_at=datetime.now(UTC)))
    except Exception as exc:  # the failed try, as the relay records it
        return f"{type(exc).__name__}: {exc}"
    return None


async def test_a_production_webhook_goes_to_the_address_checked_not_one_the_name_rebinds_to(
    engine: AsyncEngine, dns: Resolver, receiver: WebhookReceiver,
) -> None:
    """DNS rebinding: the merchant's name answers a public address when Lunas checks it and
    loopback a moment later. Resolving again to connect would have the production worker POST
    to its own neighbour; the try connects to the address that was checked (here one nobody
    listens on), and the endpoint on loopback hears nothing."""
    dns.answers["rebind.lunas.test"] = [NOWHERE, "127.0.0.1"]
    merchant = await add_merchant(engine, f"http://rebind.lunas.test:{receiver.port}/hooks")
    async with webhook_client(TIMEOUT) as http:
        handler = MerchantWebhookHandler(engine, http, TIMEOUT,
                                         egress=EgressPolicy(public_only=True))
        error = await deliver(handler, merchant)
    assert receiver.deliveries == []
    assert error is not None and error.startswith("WebhookDeliveryError: transport error"), error


async def test_a_webhook_goes_straight_to_the_merchant_whatever_proxy_the_environment_names(
    engine: AsyncEngine, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``HTTP_PROXY`` and friends are for the operator's own tools: a worker that honoured them
    would hand every signed body and its order data to whatever the environment names."""
    proxy = WebhookReceiver()
    await proxy.start()
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                     "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        merchant = await add_merchant(engine, f"http://127.0.0.1:{receiver.port}/hooks")
        async with webhook_client(TIMEOUT) as http:
            error = await deliver(MerchantWebhookHandler(engine, http, TIMEOUT), merchant)
    finally:
        await proxy.stop()
    assert error is None
    assert proxy.deliveries == []
    assert len(receiver.deliveries) == 1


class TlsReceiver(WebhookReceiver):
    """The merchant's endpoint over TLS, with a certificate for ``name`` only."""

    def __init__(self, name: str, workdir: Path) -> None:
        super().__init__()
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_context.load_cert_chain(cert, key)
        self.client_context = ssl.create_default_context(cafile=str(cert))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  ssl=self.server_context)


async def test_a_pinned_connection_still_names_the_host_in_its_tls_handshake_and_host_header(
    engine: AsyncEngine, dns: Resolver, tmp_path: Path,
) -> None:
    """Connecting to the address checked must not mean talking to it as an address: the TLS
    certificate is checked against the merchant's name (a certificate for the name alone is
    accepted), SNI and ``Host`` carry the name, and the name is looked up once per try."""
    name = "shop.lunas.test"
    dns.answers[name] = ["127.0.0.1"]
    receiver = TlsReceiver(name, tmp_path)
    await receiver.start()
    try:
        merchant = await add_merchant(engine, f"https://{name}:{receiver.port}/hooks")
        async with webhook_client(TIMEOUT, verify=receiver.client_context) as http:
            handler = MerchantWebhookHandler(engine, http, TIMEOUT)
            assert await deliver(handler, merchant) is None
            assert await deliver(handler, merchant) is None  # a second try looks the name up again
    finally:
        await receiver.stop()
    assert [h["host"] for h, _ in receiver.deliveries] == [f"{name}:{receiver.port}"] * 2
    assert dns.lookups == [name, name]


async def test_a_production_worker_sends_no_webhook_over_plain_http(
    engine: AsyncEngine, receiver: WebhookReceiver,
) -> None:
    """A URL stored before https was required (or by ``merchants create``) is refused at each
    try, the refusal recorded as the try's error (no URL in it), never sent in clear."""
    merchant = await add_merchant(engine, f"http://127.0.0.1:{receiver.port}/hooks")
    async with webhook_client(TIMEOUT) as http:
        handler = MerchantWebhookHandler(
            engine, http, TIMEOUT, egress=Settings(environment="production").webhook_egress)
        error = await deliver(handler, merchant)
    assert error is not None and "must use https://" in error, error
    assert str(receiver.port) not in error
    assert receiver.deliveries == []
