"""A status read that straddles an order's deadline: asked before it, answered after it.

"Pending" then says the instrument was unpaid when the provider answered, before the deadline;
it says nothing of the moment between that answer and the deadline, in which the customer may
still have paid. Only a read asked at or after the deadline (or the provider's own expiry of the
instrument) shows an attempt unpaid by the deadline.

Chaos-style: the real service and worker against the Midtrans simulator over real sockets, on
PostgreSQL and Redis, with a fault proxy between Lunas and the simulator holding the answer back
on its way (the simulator decides its answer at once; the proxy delays only the bytes back). The
clock is Lunas's own, moved by the test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa

from chaos.proxy import FaultProxy
from chaos.sim.runner import start_simulators
from orchestrator.bootstrap import Container, build
from orchestrator.domain.clock import FrozenClock
from orchestrator.services.expiry import expire_due_orders, settle_verifying_orders
from orchestrator.store.tables import orders, payment_attempts, review_cases
from orchestrator.worker import run_worker
from tests.integration.test_deferred_verification import leave_nothing_due
from tests.integration.test_failover import gateway_settings
from tests.invariants import assert_rules_of_state
from tests.support import eventually, new_merchant, order_body, serve

HELD_BACK = timedelta(seconds=2)
"""How long the proxy holds the answer: the test pays and moves the clock meanwhile."""
QUARANTINE, WINDOW = timedelta(hours=1), timedelta(hours=2)


async def test_a_pending_answer_to_a_read_asked_before_the_deadline_expires_nothing(
    container: Container,
) -> None:
    """The verifier reads a Midtrans QR one second before its order's deadline; Midtrans
    answers ``pending`` at once, the answer is slow on its way back, the customer pays in that
    second, and the answer arrives after the deadline. The payment was made in time: the order
    must end ``paid``, with no review case. Before: the late answer expired the attempt, the
    order expired, and the payment found by the read after the cancel opened a
    ``payment_after_expiry`` case (README, Known edges)."""
    sims = await start_simulators()
    data = httpx.URL(sims.midtrans.data_url)
    proxy = FaultProxy("127.0.0.1", 0, data.host, data.port or 80)
    await proxy.start()
    clock = FrozenClock(datetime.now(UTC))
    base = gateway_settings(container.settings, sims)
    c = build(replace(base, providers=replace(
        base.providers, midtrans_url=f"http://127.0.0.1:{proxy.port}",
        call_timeout=HELD_BACK * 5)), clock=clock)
    await c.start()
    merchant = await new_merchant(c)
    stop = asyncio.Event()
    worker: asyncio.Task[None] | None = None
    try:
        async with serve(c) as url, httpx.AsyncClient(base_url=url, timeout=30) as client, \
                httpx.AsyncClient(base_url=sims.midtrans.control_url) as midtrans:
            assert (await midtrans.post("/config", json={"drop_notifications": True})
                    ).status_code < 300
            r = await client.post("/v1/orders", json=order_body(
                f"DL-{uuid.uuid4().hex[:10]}", 125_000, rail="qris"), headers={
                **merchant.headers, "Idempotency-Key": str(uuid.uuid4())})
            assert r.status_code == 201, r.text
            placed = r.json()
            assert placed["routing"]["served_by"] == "qris:midtrans:qris"
            oid, aid = placed["id"], placed["payment"]["attempt_id"]
            async with c.db.read() as conn:
                claimed = (await conn.execute(
                    sa.select(payment_attempts, orders.c.state.label("order_state"))
                    .join(orders, orders.c.id == payment_attempts.c.order_id)
                    .where(payment_attempts.c.id == aid))).one()
            deadline = claimed.expires_at
            clock.advance(deadline - timedelta(seconds=1) - clock.now())

            proxy.latency(HELD_BACK.total_seconds() * 1000, direction="downstream")
            since = time.time()
            reading = asyncio.create_task(c.verifier.check(claimed))

            async def asked() -> bool:  # Midtrans has decided its answer (in one step)
                return bool(sims.midtrans.faults.request_log("status", since))

            await eventually(asked, 10, "the status read to reach Midtrans")
            paid = await midtrans.post("/pay", json={"order_id": aid})
            assert paid.status_code == 200, paid.text  # a second before the deadline
            clock.advance(timedelta(seconds=2))  # the deadline passes; the answer is on its way
            assert not reading.done(), "the answer came back before the deadline passed"
            await reading
            proxy.clear()

            # The deadline sweeps, then the worker, as they would run next.
            await expire_due_orders(c.db, now=clock.now(), quarantine=QUARANTINE, batch=10)
            await settle_verifying_orders(c.db, now=clock.now(), quarantine=QUARANTINE,
                                          window=WINDOW, batch=10)
            worker = asyncio.create_task(run_worker(c, stop))

            async def decided() -> bool:
                async with c.db.read() as conn:
                    return (await conn.execute(sa.select(orders.c.state).where(
                        orders.c.id == oid))).scalar_one() in ("paid", "needs_review")

            await eventually(decided, 20, "the order to be decided")
        async with c.db.read() as conn:
            state = (await conn.execute(sa.select(orders.c.state).where(orders.c.id == oid))
                     ).scalar_one()
            cases = (await conn.execute(sa.select(review_cases.c.reason).where(
                review_cases.c.order_id == oid))).scalars().all()
        assert (state, cases) == ("paid", []), (state, cases)
        await assert_rules_of_state(c.db, [oid])
    finally:
        stop.set()
        if worker is not None:
            await asyncio.wait_for(worker, timeout=15)
        await leave_nothing_due(c, merchant.merchant_id)
        await c.close()
        await proxy.stop()
        await sims.stop()
