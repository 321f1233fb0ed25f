"""Helpers shared by integration and e2e tests: free ports, a served app, merchants, statements."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import uvicorn

from chaos.infra import free_port
from chaos.sim.statements import bca_statement  # noqa: F401 - tests import it from here
from orchestrator.app import create_app
from orchestrator.bootstrap import Container
from orchestrator.serving import EmbeddedServer
from orchestrator.store.merchants import OPS_SCOPES, NewMerchant, create_merchant, create_ops_token


@contextlib.asynccontextmanager
async def serve(container: Container, port: int | None = None) -> AsyncIterator[str]:
    """Serve the real app over a real socket on 127.0.0.1 (on ``port`` when a test must know it
    before the container is built); yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(create_app(container, close_on_shutdown=False), host="127.0.0.1",
                            port=port, log_level="warning", access_log=False, lifespan="on",
                            proxy_headers=True,
                            forwarded_allow_ips=list(container.settings.http.trusted_proxies),
                            # Longer than httpx's 5 s keep-alive: a pooled connection idle for
                            # ~5 s was closed by the server as the client reused it ("Server
                            # disconnected without sending a response", a flake seen in CI).
                            timeout_keep_alive=60)
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


def account_number() -> str:
    """A payout account number no other test uses, so held amounts never collide across tests."""
    return "".join(random.choice("0123456789") for _ in range(10))


@dataclass(frozen=True)
class ShopFixture:
    merchant_id: str
    api_key: str
    webhook_secret: str
    bank: str
    account_number: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


async def new_merchant(
    container: Container, *, webhook_url: str | None = None, bank: str = "bca"
) -> ShopFixture:
    number = account_number()
    async with container.db.transaction() as conn:
        created: NewMerchant = await create_merchant(
            conn, name="Toko Uji", webhook_url=webhook_url,
            accounts=[(bank, number, "TOKO UJI")], now=container.clock.now(),
        )
    return ShopFixture(created.merchant_id, created.api_key, created.webhook_secret, bank, number)


async def new_ops_token(container: Container) -> str:
    async with container.db.transaction() as conn:
        _, token = await create_ops_token(conn, name="finance-test", scopes=OPS_SCOPES,
                                          now=container.clock.now())
    return token


def order_body(merchant_order_id: str, amount: int = 150_000, **extra: object) -> dict[str, object]:
    return {
        "merchant_order_id": merchant_order_id,
        "amount": amount,
        "customer": {
            "name": "Andi Wijaya", "email": "andi@example.co.id", "phone": "+6281234567890",
        },
        **extra,
    }


class ShiftedClock:
    """Real time plus an offset a test moves forward, to reach deadlines without waiting."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


def metric_value(exposition: bytes, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent), labels in any order."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in exposition.decode().splitlines():
        if not labels and line.startswith(name + " "):
            return float(line.split()[1])
        if line.startswith(name + "{"):
            inside, value = line[len(name) + 1:].rsplit("} ", 1)
            if set(inside.split(",")) == wanted:
                return float(value)
    return 0.0


async def eventually(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``probe`` every 0.1 s until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def signed_push(client: httpx.AsyncClient, container: Container,
                      items: list[dict[str, object]]) -> httpx.Response:
    """A Moota-style push of ``items`` to the service, signed as Moota signs (RAILS.md §3.3)."""
    body = json.dumps(items).encode()
    signature = hmac.new(container.settings.mutation_push_secret.encode(), body,
                         hashlib.sha256).hexdigest()
    return await client.post("/v1/mutations/push", content=body, headers={
        "Signature": signature, "Content-Type": "application/json"})


@contextlib.asynccontextmanager
async def raw_http_server(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A server that answers each connection with ``answer``, for answers no real HTTP server
    gives (a body trickling in, an odd shape): its base URL while the block runs."""
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
