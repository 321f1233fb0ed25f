"""Verification where it meets other features: a deferred read racing the expiry sweep for what
the merchant hears, and reads a half-open breaker refuses competing with the provider's shared
pace. Each was found by reading where features built separately meet (05dd6bc..fc3e7a7), and
failed before its fix.

Real PostgreSQL (a database of its own: the tests claim outbox events directly, and a claim
takes every due event) and the real services; no provider is called.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container, build
from orchestrator.domain.events import MERCHANT_VISIBLE
from orchestrator.domain.ids import new_id
from orchestrator.outbox import queries
from orchestrator.rails.breaker import BreakerConfig, BreakerRegistry, BreakerState, Outcome
from orchestrator.rails.guard import BreakerGuard
from orchestrator.rails.midtrans import MidtransProvider
from orchestrator.rails.ratelimit import Pace, PaceBusy, RequestPacer
from orchestrator.rails.router import RouteUnavailable
from orchestrator.services.expiry import (
    expire_due_orders,
    payment_pending_event_id,
    settle_verifying_orders,
)
from orchestrator.services.status_reads import StatusReads, route_of
from orchestrator.settings import DatabaseSettings, RedisSettings, Settings
from orchestrator.store.engine import migrate
from orchestrator.store.tables import orders, outbox, payment_attempts
from orchestrator.tls import default_trust
from tests.conftest import REDIS_URL, create_database, drop_database
from tests.support import ShopFixture, new_merchant


@pytest.fixture(scope="module")
async def seams(redis_prefix: str) -> AsyncIterator[Container]:
    url = await create_database("lunas_seams")
    c = build(Settings(environment="test", database=DatabaseSettings(url=url, pool_size=10),
                       redis=RedisSettings(url=REDIS_URL, key_prefix=f"{redis_prefix}seams:")))
    await migrate(c.db.engine)
    try:
        yield c
    finally:
        await c.close()
        await drop_database(url)


def now() -> datetime:
    return datetime.now(UTC)


async def verifying_order(c: Container, m: ShopFixture) -> str:
    """A gateway order past its deadline, in ``verifying`` while its instruments are read."""
    oid, t = new_id("ord"), now()
    async with c.db.transaction() as conn:
        await conn.execute(orders.insert().values(
            id=oid, merchant_id=m.merchant_id, merchant_order_id=f"INV-{uuid.uuid4().hex[:8]}",
            amount=100_000, currency="IDR", state="verifying", rail="qris", channel="qris",
            customer_name="A", customer_email="a@example.com", customer_phone="+6281234567890",
            metadata={}, created_at=t - timedelta(hours=1), updated_at=t,
            expires_at=t - timedelta(minutes=1), verifying_since=t - timedelta(minutes=1)))
    return oid


async def attempt(c: Container, oid: str, *, provider: str, state: str) -> str:
    aid, t = new_id("att"), now()
    async with c.db.transaction() as conn:
        await conn.execute(payment_attempts.insert().values(
            id=aid, order_id=oid, rail="qris", provider=provider, channel="qris", state=state,
            transfer_amount=100_000, provider_ref=f"ref-{aid}", created_at=t, updated_at=t,
            expires_at=t - timedelta(minutes=1), next_check_at=t))
    return aid


async def as_claimed(c: Container, aid: str) -> Any:
    """The attempt as the verifier's claim reads it (with its order's state)."""
    async with c.db.read() as conn:
        return (await conn.execute(
            sa.select(payment_attempts, orders.c.state.label("order_state"))
            .join(orders, orders.c.id == payment_attempts.c.order_id)
            .where(payment_attempts.c.id == aid))).one()


async def claim_webhooks(c: Container, oid: str) -> list[str]:
    """What a relay would take and deliver now of the order's merchant webhooks (the real claim,
    with the per-order hold-back), in the order it would send them; they are marked done, as
    once delivered."""
    claim = queries.claim_batch(
        c.db.engine.dialect.name, worker_id=new_id("w"), now=now(),
        lease=timedelta(minutes=5), limit=100,
        cap=queries.MerchantCap(event_types=MERCHANT_VISIBLE, per_merchant=100, held={}))
    async with c.db.engine.begin() as conn:
        rows = sorted(await claim.run(conn), key=lambda r: r.id)
        await conn.execute(outbox.update().where(outbox.c.id.in_([r.id for r in rows]))
                           .values(status="done"))
    return [r.event_type for r in rows if r.aggregate_id == oid]


async def deliver_all(c: Container, oid: str) -> list[str]:
    sent: list[str] = []
    while taken := await claim_webhooks(c, oid):
        sent += taken
    return sent


async def waiting_on_a_lock(c: Container, query_like: str) -> bool:
    async with c.db.read() as conn:
        return bool((await conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE :q"), {"q": f"%{query_like}%"})).scalar())


async def test_a_deferred_read_never_announces_pending_after_the_order_went_to_review(
    seams: Container,
) -> None:
    """An order in ``verifying`` whose Midtrans QR cannot be read (Midtrans down) at the end of
    its verification window. The verifier's deferral tells the merchant
    ``order.payment_pending`` ("still checking, next check at ..."); the sweep sends the order
    to a person, ``order.needs_review``. Whichever commits first, the merchant must never receive
    ``payment_pending`` after ``needs_review``, nor one written for an order no longer
    ``verifying``.

    (A payment on another instrument cannot race the deferral this way: it retires the deferred
    attempt, whose row the deferral holds, so it waits. The sweep's move to review touches no
    attempt.) To hold the deferral between its read of the order and its commit, as a slow
    moment would, a transaction holds (uncommitted) an outbox row with the event id the
    deferral inserts: its INSERT ... ON CONFLICT waits for it, its outbox id already drawn."""
    c = seams
    m = await new_merchant(c)
    oid = await verifying_order(c, m)
    down = await attempt(c, oid, provider="midtrans", state="superseded")
    deferred = await as_claimed(c, down)
    c.breakers.get(route_of(deferred).key).force_open("Midtrans down")
    try:
        async with c.db.engine.connect() as holder:
            tx = await holder.begin()
            await holder.execute(outbox.insert().values(
                event_id=payment_pending_event_id(oid), event_type="hold", aggregate_id=None,
                merchant_id=None, payload={}, status="done", attempts=0, created_at=now(),
                available_at=now()))
            deferral = asyncio.create_task(c.verifier.check(deferred))
            for _ in range(100):
                if await waiting_on_a_lock(c, "INSERT INTO outbox"):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the deferral never reached its event")
            # The sweep, meanwhile: the window (30 s here) ran out.
            sweep = asyncio.create_task(settle_verifying_orders(
                c.db, now=now(), quarantine=timedelta(hours=1), window=timedelta(seconds=30),
                batch=10))
            await asyncio.wait({sweep}, timeout=1.0)
            sent = await claim_webhooks(c, oid)  # a relay claiming meanwhile
            await tx.rollback()
        await deferral
        await sweep
        await settle_verifying_orders(  # again, had the first found the order locked
            c.db, now=now(), quarantine=timedelta(hours=1), window=timedelta(seconds=30),
            batch=10)
        sent += await deliver_all(c, oid)
    finally:
        c.breakers.get(route_of(deferred).key).force_closed("test over")
    async with c.db.read() as conn:
        state = (await conn.execute(sa.select(orders.c.state).where(orders.c.id == oid))
                 ).scalar_one()
    assert state == "needs_review"
    assert "order.needs_review" in sent, sent
    assert sent[sent.index("order.needs_review"):].count("order.payment_pending") == 0, sent


async def test_reads_the_breaker_refuses_spend_none_of_the_providers_pace() -> None:
    """Midtrans is recovering: its breaker is half-open and its one trial call is out. Twenty
    status reads arrive at once (closed-attempt reads queued again for the breaker's
    ``retry_at``, the reads confirming Midtrans notifications); the breaker refuses them all.
    A read of a route that can go (another channel, closed) asked just after should not wait
    behind them: a refused read sends nothing and should cost the pace nothing. No request
    reaches any provider here (the refused reads never leave; the last one only takes its
    slot). The pace is one read a second, so the slot of a read behind twenty that each took one
    is twenty seconds away: asked for ``within=0``, it is ``PaceBusy`` (nothing reserved), and
    taken at once only when none is ahead of it, however slow the machine."""
    registry = BreakerRegistry(BreakerConfig(
        failure_rate_threshold=0.5, minimum_number_of_calls=2, permitted_calls_in_half_open=1,
        wait_in_open=timedelta(milliseconds=50), max_wait_in_open=timedelta(milliseconds=50),
        wait_jitter=0.0))
    route = "qris:midtrans:qris"
    breaker = registry.get(route)
    for _ in range(2):
        (await breaker.acquire()).record(Outcome.FAILURE)
    async with asyncio.timeout(2):
        while breaker.state is not BreakerState.HALF_OPEN:
            await asyncio.sleep(0.01)
    trial = await breaker.acquire()  # the round's one trial, in flight
    pacer = RequestPacer({"midtrans": Pace(per_minute=60, headroom=0.0)}, redis=None)  # 1/s
    async with httpx.AsyncClient(verify=default_trust()) as http:
        midtrans = MidtransProvider(base_url="http://127.0.0.1:9", server_key="SB-Mid-server-x",
                                    client=http)
        reads = StatusReads({"midtrans": midtrans}, BreakerGuard(registry), pacer)
        closed = [SimpleNamespace(id=new_id("att"), rail="qris", provider="midtrans",
                                  channel="qris", provider_ref=None) for _ in range(20)]
        refused = [asyncio.create_task(reads.read(a)) for a in closed]
        await asyncio.sleep(0)  # they have all asked
        ahead = 0.0  # seconds to the slot of the next read that can go
        try:
            await pacer.acquire("midtrans", within=0)
        except PaceBusy as busy:
            ahead = busy.wait
        outcomes = await asyncio.gather(*refused, return_exceptions=True)
    trial.record(Outcome.SUCCESS)
    await registry.close()
    assert all(isinstance(o, RouteUnavailable) for o in outcomes), outcomes
    assert ahead == 0.0, f"a read that can go is {ahead:.0f} s behind 20 refused ones"


async def test_a_read_claimed_before_the_deadline_and_deferred_after_it_is_announced(
    seams: Container,
) -> None:
    """The verifier claims a QR read while its order still awaits payment; the deadline passes
    and the sweep moves the order to ``verifying`` (the read is not deferred yet, so there is
    nothing to announce); then the read finds Midtrans down and is deferred. The merchant must
    hear ``order.payment_pending``. Before (a CI run): the deferral went by the order state its
    claim saw, awaiting payment, and announced nothing; the order waited in silence."""
    c = seams
    m = await new_merchant(c)
    oid = await verifying_order(c, m)
    async with c.db.transaction() as conn:
        await conn.execute(orders.update().where(orders.c.id == oid).values(
            state="awaiting_payment"))
    read = await attempt(c, oid, provider="midtrans", state="active")
    claimed = await as_claimed(c, read)
    assert claimed.order_state == "awaiting_payment"
    await expire_due_orders(c.db, now=now(), quarantine=timedelta(hours=1), batch=10)
    async with c.db.read() as conn:
        assert (await conn.execute(sa.select(orders.c.state).where(orders.c.id == oid))
                ).scalar_one() == "verifying"
    c.breakers.get(route_of(claimed).key).force_open("Midtrans down")
    try:
        await c.verifier.check(claimed)
    finally:
        c.breakers.get(route_of(claimed).key).force_closed("test over")
    assert "order.payment_pending" in await deliver_all(c, oid)
