"""Retention: rows whose work is done are deleted once old enough; nothing still needed is.

A database of its own (the prune deletes by age across the whole table), real PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container, build
from orchestrator.outbox.queries import DEAD, DONE, PENDING
from orchestrator.services.retention import prune
from orchestrator.settings import DatabaseSettings, RetentionSettings
from orchestrator.store.engine import migrate
from orchestrator.store.tables import idempotency_keys, orders, outbox, provider_deliveries
from orchestrator.tls import default_trust
from tests.conftest import create_database, drop_database
from tests.integration.conftest import test_settings as settings_for
from tests.support import new_merchant, order_body, serve

OLD = timedelta(days=40)


@pytest.fixture
async def own(redis_prefix: str) -> AsyncIterator[Container]:
    url = await create_database("lunas_retention")
    settings = settings_for(url, redis_prefix)
    c = build(replace(settings, database=DatabaseSettings(url=url, pool_size=5)))
    try:
        await migrate(c.db.engine)
        yield c
    finally:
        await c.close()
        await drop_database(url)


async def _event(c: Container, status: str, age: timedelta) -> int:
    now = c.clock.now()
    async with c.db.transaction() as conn:
        return int((await conn.execute(outbox.insert().values(
            event_id=f"evt_{uuid.uuid4().hex}", event_type="order.paid", payload={},
            status=status, attempts=0, created_at=now - age, available_at=now - age,
        ).returning(outbox.c.id))).scalar_one())


async def _delivery(c: Container, outcome: str | None, age: timedelta) -> str:
    delivery_id = f"dlv_{uuid.uuid4().hex[:20]}"
    async with c.db.transaction() as conn:
        await conn.execute(provider_deliveries.insert().values(
            id=delivery_id, provider="xendit", received_at=c.clock.now() - age, raw_body="{}",
            headers={}, verified=True, outcome=outcome))
    return delivery_id


async def _ids(c: Container, column: sa.Column[object]) -> set[object]:
    async with c.db.read() as conn:
        return set((await conn.execute(sa.select(column))).scalars())


async def test_old_finished_rows_go_and_everything_still_needed_stays(own: Container) -> None:
    m = await new_merchant(own)
    async with serve(own) as url, httpx.AsyncClient(verify=default_trust(), base_url=url) as client:
        headers = {**m.headers, "Idempotency-Key": "k-old"}
        first = await client.post("/v1/orders", json=order_body("INV-OLD"), headers=headers)
        assert first.status_code == 201, first.text
        for n in (1, 2):  # more old keys than a batch holds
            r = await client.post("/v1/orders", json=order_body(f"INV-OLD-{n}"),
                                  headers={**m.headers, "Idempotency-Key": f"k-old-{n}"})
            assert r.status_code == 201
        fresh = await client.post("/v1/orders", json=order_body("INV-NEW"),
                                  headers={**m.headers, "Idempotency-Key": "k-new"})
        assert fresh.status_code == 201
        async with own.db.transaction() as conn:  # the first captures were weeks ago
            await conn.execute(idempotency_keys.update().where(
                idempotency_keys.c.key.like("k-old%")).values(
                created_at=own.clock.now() - timedelta(days=8)))
        done_old = {await _event(own, DONE, OLD) for _ in range(3)}
        done_new = await _event(own, DONE, timedelta(0))
        pending_old, dead_old = await _event(own, PENDING, OLD), await _event(own, DEAD, OLD)
        handled_old = await _delivery(own, "applied: settled", OLD)
        queued_old = await _delivery(own, None, OLD)
        handled_new = await _delivery(own, "duplicate", timedelta(days=1))

        # Batches of two: three old keys and three old done events take two passes each.
        settings = RetentionSettings(batch=2)
        deleted = await prune(own.db, now=own.clock.now(), settings=settings)
        assert deleted == {"idempotency_keys": 3, "outbox": 3}
        assert await _ids(own, idempotency_keys.c.key) == {"k-new"}
        left = await _ids(own, outbox.c.id)
        assert not done_old & left and {done_new, pending_old, dead_old} <= left
        assert {handled_old, queued_old, handled_new} <= await _ids(own, provider_deliveries.c.id)

        # A retry with the pruned key is a new capture, and the merchant order id, kept for
        # ever, refuses it naming the order: still one order.
        retry = await client.post("/v1/orders", json=order_body("INV-OLD"), headers=headers)
        assert retry.status_code == 409, retry.text
        assert retry.json()["code"] == "duplicate_merchant_order_id"
        assert retry.json()["existing_order_id"] == first.json()["id"]
    async with own.db.read() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(orders))
                ).scalar_one() == 4

    # Deliveries go only when configured, and only handled ones.
    keep_a_month = replace(settings, provider_deliveries=timedelta(days=30))
    deleted = await prune(own.db, now=own.clock.now(), settings=keep_a_month)
    assert deleted == {"idempotency_keys": 0, "outbox": 0, "provider_deliveries": 1}
    assert await _ids(own, provider_deliveries.c.id) == {queued_old, handled_new}
    assert await prune(own.db, now=own.clock.now(), settings=keep_a_month) == {
        "idempotency_keys": 0, "outbox": 0, "provider_deliveries": 0}


async def test_two_workers_pruning_at_once_both_finish_and_leave_nothing_old(
    own: Container,
) -> None:
    """Two prunes over the same 1,000 rows at once, in batches: neither fails (no deadlock, no
    error on a row the other deleted) and no old row is left."""
    import asyncio

    now = own.clock.now()
    async with own.db.transaction() as conn:
        await conn.execute(outbox.insert(), [
            {"event_id": f"evt_{n}", "event_type": "order.paid", "payload": {},
             "status": DONE, "attempts": 1, "created_at": now - OLD, "available_at": now - OLD}
            for n in range(1_000)])
    settings = RetentionSettings(batch=64)
    a, b = await asyncio.gather(prune(own.db, now=now, settings=settings),
                                prune(own.db, now=now, settings=settings))
    assert a["outbox"] + b["outbox"] == 1_000
    assert await _ids(own, outbox.c.id) == set()


async def test_the_worker_prunes_at_once_and_counts_what_it_deleted(own: Container) -> None:
    import asyncio

    from orchestrator.services.retention import prune_forever

    gone = await _event(own, DONE, OLD)
    stop = asyncio.Event()
    task = asyncio.create_task(prune_forever(own.db, own.clock, own.metrics,
                                             RetentionSettings(), stop))
    try:
        for _ in range(100):
            if gone not in await _ids(own, outbox.c.id):
                break
            await asyncio.sleep(0.05)
        assert gone not in await _ids(own, outbox.c.id)
        assert own.metrics.registry.get_sample_value(
            "lunas_retention_pruned_rows_total", {"table": "outbox"}) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
