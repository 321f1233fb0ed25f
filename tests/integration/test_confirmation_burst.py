"""A burst of signed Midtrans payment notifications under a tight status pace: the relay keeps
delivering other work, every payment settles exactly once, and no status read goes beyond the pace.

Every signed Midtrans payment on a live attempt is confirmed by a status read before it counts
(Midtrans does not sign ``transaction_status``), and that read draws on Midtrans's shared status
pace. Before: the read waited for its paced turn inside the relay's handler slot, so a flash
sale's notifications filled every slot with waiting reads and a Xendit delivery (or a merchant
webhook, a cancel) queued behind them waited for all of them. Now a read whose slot is more than
``LUNAS_CONFIRM_READ_WAIT`` away gives up without spending a slot, and hands the attempt to the
verifier, brought forward, which settles it at the pace.

Runs the real service with both simulators on the session's PostgreSQL and Redis, the worker's
relay and verifier in-process.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest

from chaos.sim.runner import Simulators
from orchestrator.bootstrap import Container
from orchestrator.outbox.relay import Relay
from orchestrator.rails.ratelimit import Pace, RequestPacer
from orchestrator.store.tables import outbox
from tests.integration.test_failover import Stack, sims  # noqa: F401
from tests.integration.test_provider_webhooks import (
    attempt_row,
    closed_reads,
    deliveries,
    evidence_count,
    late_payment_nobody_can_verify,
    midtrans_body,
    order_and_attempt,
    order_state,
    outcomes,
    serving_stack,
    sim_post,
    wait_for,
    worker_relay,
)
from tests.support import metric_value

PAYMENTS = 8
"""Enough to fill the relay's slots twice over: before, the Xendit delivery waited for all but
the last slots' worth of their paced reads (more than half); now for two or so. Each payment
the relay hands on costs the verifier's drain a paced read (1.1 s)."""
RELAY_SLOTS = 3
STATUS_PACE = 60.0
"""Midtrans status reads a minute: with the default 10 % headroom, one every 1.1 s."""
BOOKED = 4
"""Reads another worker books ahead on that pace to make it busy: ~4.4 s of it, so for the
first 2.4 s the next free slot is more than ``LUNAS_CONFIRM_READ_WAIT`` (2 s) away. (Six made
every test that waits for the pace to come free wait 2.2 s longer.)"""


@pytest.fixture
async def stack(container: Container, sims: Simulators) -> AsyncIterator[Stack]:  # noqa: F811
    """test_provider_webhooks's stack with Midtrans status reads paced at 60 a minute and a
    relay of three slots. Provider calls may take 5 s, not the 0.8 s the failover tests use: the
    simulators share this process's event loop with the service, and on a loaded runner a
    confirming read timed out (CI, 2026-12-01), a failure this test is not about."""
    async with serving_stack(container, sims, lambda s: replace(
            s, providers=replace(s.providers, call_timeout=timedelta(seconds=5)),
            outbox=replace(s.outbox, concurrency=RELAY_SLOTS,
                              merchant_concurrency=RELAY_SLOTS),
            verification=replace(s.verification, status_reads_per_minute={
                "midtrans": STATUS_PACE, "xendit": 600.0}))) as served:
        yield served


async def running(relay: Relay, until: Callable[[], Awaitable[object]], want: object,
                  timeout: float = 60.0) -> None:
    """``relay`` running as the worker runs it (claiming whenever a slot is free) until
    ``until() == want``."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(until, want, timeout=timeout)
    finally:
        stop.set()
        await task


async def all_paid(stack: Stack, order_ids: list[str]) -> bool:
    return all([await order_state(stack, o)() == "paid" for o in order_ids])


def peak(times: list[float], window: float) -> int:
    """The most requests in any ``window`` seconds."""
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


async def test_a_burst_of_payment_notifications_never_starves_the_relay(stack: Stack) -> None:
    midtrans = stack.sims.midtrans.control_url
    key = stack.container.settings.providers.midtrans_server_key
    # A flash sale: eight QRIS payments at Midtrans, notified all at once (the test posts the
    # notifications itself, so they arrive together).
    await sim_post(midtrans, "/config", {"drop_notifications": True})
    paid: list[tuple[str, Any]] = []
    for _ in range(PAYMENTS):
        order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
        await sim_post(midtrans, "/pay", {"order_id": attempt.id})
        paid.append((order_id, attempt))
    since = time.time()
    for _, attempt in paid:
        r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(midtrans_body(
            attempt, status="settlement", code="200", txid=str(uuid.uuid4()), key=key)))
        assert r.status_code == 200, r.text
    # Queued behind them: a Xendit VA payment's callback.
    va_order, va = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": va.id, "amount": va.transfer_amount})
    await wait_for(deliveries(stack, va.id), 1)

    # The relay alone (no verifier): the Xendit payment settles while few confirming reads have
    # gone. Before, it waited until all but the last slots' worth had had their paced turn.
    await running(worker_relay(stack.container), order_state(stack, va_order), "paid")
    confirming = await stack.call_times("midtrans", since, operation="status")
    assert len(confirming) <= PAYMENTS // 2, (
        f"the Xendit delivery waited for {len(confirming)} paced reads")

    # Every notification was handled: confirmed by its read, or handed to the verifier.
    handed = 0
    for order_id, attempt in paid:
        [(verified, outcome)] = await outcomes(stack, attempt.id)
        assert verified and outcome is not None
        if outcome.startswith("payment applied"):
            continue
        assert outcome.startswith(
            "signed payment on a live attempt: not applied, no slot of the midtrans status pace "
            "within 2 s"), outcome
        assert "; status read brought forward to " in outcome, outcome
        assert (await order_state(stack, order_id)()) == "awaiting_payment"
        handed += 1
    assert handed >= PAYMENTS - len(confirming)
    exposition = generate_latest(stack.container.metrics.registry)
    assert metric_value(exposition, "lunas_payment_confirmations_total", provider="midtrans",
                        outcome="pace_busy") == handed
    assert metric_value(exposition, "lunas_payment_confirmations_total", provider="midtrans",
                        outcome="read") == PAYMENTS - handed

    # The verifier confirms the rest at the pace: each payment settles once.
    stop = asyncio.Event()
    verifier = asyncio.create_task(stack.container.verifier.run(stop))
    try:
        await running(worker_relay(stack.container), lambda: all_paid(
            stack, [o for o, _ in paid]), True, timeout=90)
    finally:
        stop.set()
        await verifier
    for order_id, _ in paid:
        assert await evidence_count(stack, order_id) == 1
    assert await evidence_count(stack, va_order) == 1
    # Never beyond the pace: one request a second is admitted (10 % headroom on 60 a minute),
    # so two seconds hold two, three with the jitter between admission and arrival.
    reads = await stack.call_times("midtrans", since, operation="status")
    assert len(reads) >= PAYMENTS
    assert peak(reads, 2.0) <= 3, reads



async def test_a_closed_attempt_read_finding_the_pace_booked_is_queued_again_not_waited_for(
    stack: Stack,
) -> None:
    """The status read of an attempt Lunas closed (a late payment nobody could verify) runs in
    a relay slot too. Another worker's reads have booked Midtrans's status pace seconds ahead:
    the read does not sit in its slot for its turn; it is queued again for when the pace has
    room, sending nothing now, and the job still reads and finds the payment later."""
    order_id, attempt = await late_payment_nobody_can_verify(stack)
    c = stack.container
    # Another worker's pacer, reserving up to 10 s ahead: its reads book ~4.4 s of the pace.
    elsewhere = RequestPacer({"midtrans": Pace(per_minute=STATUS_PACE)}, redis=c.redis,
                             key_prefix=c.settings.redis.key_prefix, max_wait=10)
    booked = [asyncio.create_task(elsewhere.acquire("midtrans")) for _ in range(BOOKED)]
    try:
        await asyncio.sleep(0.2)  # they have all reserved their turns
        since = time.time()

        async def pace_busy() -> bool:
            return str((await attempt_row(stack, attempt.id)).last_check).startswith(
                "status read queued: pace busy: no midtrans status slot within 2 s, again in ")

        await running(worker_relay(c), pace_busy, True, timeout=10)
        assert await closed_reads(stack, attempt.id, "pending")() == 1
        assert [t for t in await stack.call_times("midtrans", since, operation="status")] == []
    finally:
        for task in booked:
            task.cancel()
        await asyncio.gather(*booked, return_exceptions=True)
    async with c.db.transaction() as conn:  # its turn has come
        await conn.execute(outbox.update().where(
            outbox.c.event_type == "attempt.verify", outbox.c.aggregate_id == attempt.id,
            outbox.c.status == "pending").values(available_at=c.clock.now()))
    await running(worker_relay(c), order_state(stack, order_id), "needs_review")
