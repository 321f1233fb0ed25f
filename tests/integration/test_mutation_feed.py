"""The Moota-style mutation feed: polled through its own breaker into the same deduplicated store
as the signed push; a feed outage goes stale, loses nothing, and the next poll catches up.

Real sockets: the service (session ``client``), the Moota simulator, PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from chaos.sim.moota import MootaSim
from orchestrator.bootstrap import Container, build
from orchestrator.rails.breaker import BreakerConfig, BreakerOpen
from orchestrator.rails.errors import RailError
from orchestrator.services.feed_poller import FeedPoller
from orchestrator.settings import FeedSettings, RedisSettings
from orchestrator.store.tables import evidence, mutations, orders
from tests.support import ShopFixture, new_merchant, order_body

STALE_AFTER = timedelta(seconds=1)


@pytest.fixture
async def sim() -> AsyncIterator[MootaSim]:
    s = MootaSim()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def feed(container: Container, sim: MootaSim) -> AsyncIterator[Container]:
    """A second container on the same database whose feed URL points at the simulator, with a
    breaker small enough to trip in two polls."""
    base = container.settings
    settings = replace(
        base,
        feed=FeedSettings(moota_url=sim.data_url, moota_token=sim.token,
                          poll_interval=timedelta(seconds=60), stale_after=STALE_AFTER),
        redis=RedisSettings(url=base.redis.url,
                            key_prefix=f"{base.redis.key_prefix}feed{secrets.token_hex(3)}:"),
        breaker=BreakerConfig(minimum_number_of_calls=2, failure_rate_threshold=0.5,
                              sliding_window=timedelta(seconds=30), wait_in_open=timedelta(
                                  seconds=0.5), max_wait_in_open=timedelta(seconds=1),
                              permitted_calls_in_half_open=1, wait_jitter=0.0),
    )
    c = build(settings)
    await c.start()
    yield c
    await c.close()


def poller_of(c: Container) -> FeedPoller:
    assert c.feed_poller is not None
    return c.feed_poller


async def capture(client: httpx.AsyncClient, m: ShopFixture, amount: int = 150_000
                  ) -> dict[str, Any]:
    r = await client.post("/v1/orders", json=order_body(f"INV-{uuid.uuid4().hex[:10]}", amount),
                          headers={**m.headers, "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text
    assert r.json()["payment"]["rail"] == "manual_transfer"
    return dict(r.json())


async def transfer(sim: MootaSim, account: str, amount: int, kind: str = "CR"
                   ) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{sim.control_url}/mutations", json={
            "account_number": account, "amount": amount, "type": kind,
            "description": f"TRSF E-BANKING CR 1003/FTSCY/WS95031 {amount}.00 ANDI"})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def fault(sim: MootaSim, method: str, **body: Any) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.request(method, f"{sim.control_url}/faults",
                            json=body if method == "POST" else None)
    assert r.status_code == 200, r.text


async def status(client: httpx.AsyncClient, m: ShopFixture, order_id: str) -> str:
    return str((await client.get(f"/v1/orders/{order_id}", headers=m.headers)).json()["status"])


async def stored(c: Container, account: str) -> list[Any]:
    async with c.db.read() as conn:
        return list((await conn.execute(sa.select(mutations).where(
            mutations.c.account_number == account))).all())


async def test_the_sim_pages_like_laravel_and_refuses_a_wrong_token(sim: MootaSim) -> None:
    for n in range(25):
        await transfer(sim, "0123456789", 10_000 + n)
    async with httpx.AsyncClient(base_url=sim.data_url) as c:
        bad = await c.get("/mutation", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        r = await c.get("/mutation", params={"page": 2}, headers={
            "Authorization": f"Bearer {sim.token}"})
    body = r.json()
    assert (body["current_page"], body["last_page"], body["per_page"], body["total"]) == (
        2, 2, 20, 25)
    assert len(body["data"]) == 5 and body["next_page_url"] is None and body["prev_page_url"]
    item = body["data"][0]
    assert item["amount"].endswith(".00") and item["type"] == "CR"
    assert item["mutation_id"] == item["token"] and len(item["date"]) == 19


async def test_feed_settles_dedupes_with_push_and_catches_up_after_an_outage(
    client: httpx.AsyncClient, container: Container, feed: Container, sim: MootaSim
) -> None:
    poller = poller_of(feed)
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    mutation = await transfer(sim, m.account_number, pay)

    first = await poller.poll()  # the customer's transfer appears in the feed: the order is paid
    assert (first.new, first.matched) == (1, 1)
    assert await status(client, m, order["id"]) == "paid"
    assert poller.last_ok is not None and not poller.stale(feed.clock.now())
    assert b"lunas_feed_last_success_timestamp_seconds" in feed.metrics.exposition()

    second = await poller.poll()  # re-read: nothing new
    assert (second.new, second.duplicate, second.matched) == (0, 1, 0)

    # The same mutation pushed by Moota (same mutation_id) is a duplicate of the polled one.
    body = json.dumps([{k: v for k, v in mutation.items() if k != "token"}],
                      separators=(",", ":")).encode()
    signature = hmac.new(container.settings.mutation_push_secret.encode(), body,
                         hashlib.sha256).hexdigest()
    pushed = await client.post("/v1/mutations/push", content=body, headers={
        "Signature": signature, "Content-Type": "application/json"})
    assert pushed.status_code == 200, pushed.text
    assert (pushed.json()["new"], pushed.json()["duplicate"]) == (0, 1)
    rows = await stored(container, m.account_number)
    assert [(r.source, r.order_id) for r in rows] == [("feed", order["id"])]
    async with container.db.read() as conn:
        proofs = (await conn.execute(sa.select(sa.func.count()).select_from(evidence).where(
            evidence.c.order_id == order["id"]))).scalar_one()
    assert proofs == 1

    # The feed goes down: polls fail through the breaker, which opens; the feed goes stale.
    await fault(sim, "POST", kind="down")
    late = await capture(client, m, 175_000)
    for _ in range(2):
        with pytest.raises(RailError):
            await poller.poll()
    with pytest.raises(BreakerOpen):
        await poller.poll()
    assert poller.stale(poller.last_ok + STALE_AFTER)
    # Meanwhile the bank keeps receiving money: the late order's transfer and more than a page.
    await transfer(sim, m.account_number, late["payment"]["transfer_amount"])
    other = await new_merchant(container)
    for n in range(120):
        await transfer(sim, other.account_number, 1_000_000 + n)
    await asyncio.sleep(STALE_AFTER.total_seconds())  # past the stale window and the open wait
    assert poller.stale(feed.clock.now())
    assert await status(client, m, late["id"]) == "awaiting_payment"

    # The feed comes back: the next poll (the half-open trial) reads every page and catches up.
    await fault(sim, "DELETE")
    caught_up = await poller.poll()
    assert (caught_up.parsed, caught_up.new, caught_up.duplicate) == (122, 121, 1)
    assert not poller.stale(feed.clock.now())
    assert await status(client, m, late["id"]) == "paid"
    assert len(await stored(container, other.account_number)) == 120
    assert len(await stored(container, m.account_number)) == 2
    async with container.db.read() as conn:
        states = (await conn.execute(sa.select(orders.c.state).where(
            orders.c.id.in_([order["id"], late["id"]])))).scalars().all()
    assert sorted(states) == ["paid", "paid"]
