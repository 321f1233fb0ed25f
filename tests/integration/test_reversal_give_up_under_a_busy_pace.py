"""A reversal whose answer stays unreadable is given up on even when the pace is busy between reads.

A chargeback's confirming status read runs in a relay slot and asks for a paced slot only within
``LUNAS_CONFIRM_READ_WAIT``; no slot that soon (``PaceBusy``) queues it again. Answers Lunas cannot
read, ``UNREADABLE_GIVE_UP`` in a row a day after the notification, dead-letter the delivery for a
person. A busy pace between two unreadable answers is not an answer: it must not restart the
count, or under steady load (a flash sale, a recovery drain) the chargeback is read for ever and
reaches nobody.

Runs the real service with both simulators on the session's PostgreSQL and Redis (the ``stack``
of test_confirmation_burst: Midtrans status reads paced at 60 a minute, retries after 0.3 s).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.rails.ratelimit import Pace, RequestPacer
from orchestrator.services.provider_webhooks import UNREADABLE_GIVE_UP
from orchestrator.store.tables import outbox, provider_deliveries
from tests.integration.test_confirmation_burst import BOOKED, STATUS_PACE, stack  # noqa: F401
from tests.integration.test_failover import Stack, sims  # noqa: F401
from tests.integration.test_provider_webhooks import (
    midtrans_body,
    paid_midtrans_order,
    review,
    run_relay,
    sim_post,
)


async def confirmation(stack: Stack, attempt_id: str) -> tuple[int, dict[str, Any] | None]:  # noqa: F811
    """(dead confirmation jobs, the pending one's payload) of ``attempt_id``'s deliveries."""
    async with stack.container.db.read() as conn:
        rows = (await conn.execute(sa.select(outbox.c.status, outbox.c.payload).where(
            outbox.c.event_type == "provider.delivery", outbox.c.aggregate_id == attempt_id,
            outbox.c.status.in_(("dead", "pending"))))).all()
    pending = [r.payload for r in rows if r.status == "pending"]
    return sum(r.status == "dead" for r in rows), (pending[0] if pending else None)


async def make_confirmation_due(stack: Stack, attempt_id: str) -> None:  # noqa: F811
    async with stack.container.db.transaction() as conn:
        await conn.execute(outbox.update().where(
            outbox.c.event_type == "provider.delivery", outbox.c.aggregate_id == attempt_id,
            outbox.c.status == "pending").values(available_at=stack.container.clock.now()))


async def test_a_busy_pace_between_unreadable_answers_does_not_restart_their_count(
    stack: Stack,  # noqa: F811
) -> None:
    order_id, attempt, paid = await paid_midtrans_order(stack)
    c = stack.container
    await sim_post(stack.sims.midtrans.control_url, "/answer", {
        "order_id": attempt.id, "fields": {"transaction_status": "on_hold"}})
    chargeback = midtrans_body(attempt, status="chargeback", code="200",
                               txid=paid["transaction_id"],
                               key=c.settings.providers.midtrans_server_key)
    r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(chargeback))
    assert r.status_code == 200, r.text
    async with c.db.transaction() as conn:  # a day old: unreadable answers are given up on
        await conn.execute(provider_deliveries.update().where(
            provider_deliveries.c.attempt_id == attempt.id,
            provider_deliveries.c.outcome.is_(None)).values(
                received_at=c.clock.now() - timedelta(days=1)))

    async def unreadable_so_far() -> object:
        payload = (await confirmation(stack, attempt.id))[1]
        return payload and payload.get("unreadable_tries")

    await run_relay(c, unreadable_so_far, UNREADABLE_GIVE_UP - 1, timeout=20)
    tries = (await confirmation(stack, attempt.id))[1]["confirm_tries"]  # type: ignore[index]

    # Another worker's reads book Midtrans's status pace seconds ahead: the next read finds
    # no slot within LUNAS_CONFIRM_READ_WAIT and is queued again, sending nothing.
    elsewhere = RequestPacer({"midtrans": Pace(per_minute=STATUS_PACE)}, redis=c.redis,
                             key_prefix=c.settings.redis.key_prefix, max_wait=10)
    booked = [asyncio.create_task(elsewhere.acquire("midtrans")) for _ in range(BOOKED)]
    try:
        await asyncio.sleep(0.2)  # they have all reserved their turns
        await make_confirmation_due(stack, attempt.id)

        async def tried() -> object:
            payload = (await confirmation(stack, attempt.id))[1]
            return payload and payload["confirm_tries"]

        await run_relay(c, tried, tries + 1, timeout=10)
        dead, payload = await confirmation(stack, attempt.id)
        assert dead == 0
        assert payload is not None
        assert payload["unreadable_tries"] == UNREADABLE_GIVE_UP - 1, payload
    finally:
        for task in booked:
            task.cancel()
        await asyncio.gather(*booked, return_exceptions=True)

    # The next answer read is the UNREADABLE_GIVE_UP-th unreadable one in a row: given up.
    # (Busy again meanwhile, the count stays; a read restarting it would end this wait.)
    await make_confirmation_due(stack, attempt.id)

    async def next_answer() -> object:
        dead, payload = await confirmation(stack, attempt.id)
        return bool(dead) or (payload or {}).get("unreadable_tries") != UNREADABLE_GIVE_UP - 1

    await run_relay(c, next_answer, True, timeout=20)
    assert (await confirmation(stack, attempt.id))[0] == 1
    assert await review(stack, order_id) == []
