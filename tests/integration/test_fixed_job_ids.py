"""Jobs queued at most once by a fixed event id stay at most once after retention prunes them.

A fixed ``event_id`` refuses a second job only while the first row is kept; retention deletes
``done`` rows ``LUNAS_RETENTION_DONE_EVENTS`` after they were created. The watch of an expired
instrument its provider would not cancel (``gateway_jobs._watch_uncancelled``: ``watch_``,
``refused_``) runs until the code quarantine of the attempt's closing ends, so a prune can
free its id only once the watch is over, when starting it again does nothing: the settings
refuse a retention shorter than that quarantine (tests/unit/test_settings.py).

Runs the real service with both simulators on a database of its own (a prune deletes by age
across the whole table); the worker's relay runs in-process, only when a test runs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from chaos.sim.runner import Simulators
from orchestrator.bootstrap import Container
from orchestrator.domain import events
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.services.retention import prune
from orchestrator.settings import DatabaseSettings, Settings
from orchestrator.store.engine import create_engine, migrate
from orchestrator.store.tables import outbox, payment_attempts
from orchestrator.tls import default_trust
from tests.conftest import create_database, drop_database
from tests.integration.test_failover import Stack, sims  # noqa: F401
from tests.integration.test_provider_webhooks import (
    close_attempt,
    run_relay,
    scalar,
    serving_stack,
)
from tests.support import new_ops_token

KEPT = timedelta(days=1)
"""Done events kept this long, the shortest the settings take; the code quarantine as long."""
QUARANTINE = KEPT


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    url = await create_database("lunas_job_ids")
    engine = create_engine(DatabaseSettings(url=url))
    await migrate(engine)
    await engine.dispose()
    yield url
    await drop_database(url)


def on(url: str) -> Callable[[Settings], Settings]:
    def change(s: Settings) -> Settings:
        return replace(s, database=DatabaseSettings(url=url, pool_size=5),
                       unique_codes=replace(s.unique_codes, quarantine=QUARANTINE),
                       retention=replace(s.retention, done_events=KEPT))
    return change


@pytest.fixture
async def stack(container: Container, sims: Simulators,  # noqa: F811
                own_database: str) -> AsyncIterator[Stack]:
    async with serving_stack(container, sims, on(own_database)) as served:
        yield served


async def breaker(stack: Stack, route: str, action: str) -> None:
    ops = {"Authorization": f"Bearer {await new_ops_token(stack.container)}"}
    r = await stack.client.post(f"/v1/ops/routes/{route}/breaker", headers=ops,
                                json={"action": action, "reason": "xendit incident"})
    assert r.status_code == 200, r.text


def job(stack: Stack, event_id: str) -> Callable[[], Any]:
    return lambda: scalar(stack, sa.select(outbox.c.status).where(outbox.c.event_id == event_id))


async def time_passes(stack: Stack, attempt_id: str, by: timedelta) -> None:
    """As if the clock moved ``by`` forward: the attempt closed, and its jobs were written and
    came due, that much longer ago."""
    a, o = payment_attempts.c, outbox.c
    ago = sa.literal_column(f"interval '{int(by.total_seconds())} seconds'")
    async with stack.container.db.transaction() as conn:
        await conn.execute(payment_attempts.update().where(a.id == attempt_id).values(
            closed_at=a.closed_at - ago, updated_at=a.updated_at - ago))
        await conn.execute(outbox.update().where(o.aggregate_id == attempt_id).values(
            created_at=o.created_at - ago, available_at=o.available_at - ago))


async def cancels_queued(stack: Stack, attempt_id: str) -> int:
    o = outbox.c
    return int(await scalar(stack, sa.select(sa.func.count()).select_from(outbox).where(
        o.event_type == events.ATTEMPT_CANCEL_REQUESTED, o.aggregate_id == attempt_id,
        o.status == "pending")))


async def watch_reads_queued(stack: Stack, attempt_id: str) -> int:
    o = outbox.c
    return int(await scalar(stack, sa.select(sa.func.count()).select_from(outbox).where(
        o.event_type == events.ATTEMPT_VERIFY, o.aggregate_id == attempt_id,
        o.status == "pending", o.payload["watch_until"].as_string().is_not(None))))


async def test_a_cancel_refused_after_its_watch_id_was_pruned_starts_no_second_watch(
    stack: Stack,
) -> None:
    """An expired Xendit QR (no cancel at Xendit) whose cancel met an open breaker: it is
    watched (``watch_``), its cancel retried. The outage outlasts the done-event retention,
    the watch's finished first read is pruned, and the cancel tried at last is refused: the
    watch it would start again under the pruned id is over by then (its quarantine is no
    longer than the retention), so no second series of reads of the QR begins."""
    c = stack.container
    await stack.fault("midtrans", kind="down")  # QRIS served by Xendit
    placed = await stack.capture("qris", None)
    assert placed.json()["routing"]["served_by"] == "qris:xendit:qris", placed.text
    order_id = placed.json()["id"]
    async with c.db.read() as conn:
        attempt = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == order_id,
            payment_attempts.c.provider == "xendit"))).one()
    async with httpx.AsyncClient(verify=default_trust()) as client:
        await client.delete(f"{stack.sims.midtrans.control_url}/faults")
    await breaker(stack, "qris:xendit:qris", "force_open")
    await close_attempt(stack, order_id, attempt.id)
    async with c.db.transaction() as conn:
        await add_events(conn, [PendingEvent(
            event_type=events.ATTEMPT_CANCEL_REQUESTED, aggregate_id=attempt.id,
            merchant_id=None, payload={"attempt_id": attempt.id})], now=c.clock.now())
    await run_relay(c, job(stack, f"watch_{attempt.id}"), "done")
    assert await cancels_queued(stack, attempt.id) == 1  # tried again later
    assert await watch_reads_queued(stack, attempt.id) == 1  # the watch goes on

    await time_passes(stack, attempt.id, KEPT + timedelta(minutes=1))
    pruned = await prune(c.db, now=c.clock.now(), settings=c.settings.retention)
    assert pruned["outbox"] >= 1
    assert await job(stack, f"watch_{attempt.id}")() is None  # its id is free again

    await breaker(stack, "qris:xendit:qris", "release")
    await run_relay(c, lambda: cancels_queued(stack, attempt.id), 0)
    assert await job(stack, f"watch_{attempt.id}")() is None
    assert await watch_reads_queued(stack, attempt.id) <= 1
