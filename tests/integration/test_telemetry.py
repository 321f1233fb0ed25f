"""What SREs are shown moves with what happens: capture outcomes (a refusal is not an error),
paused and maintained routes, webhook receive lag, and how full each payout account's unique-code
range is. Each test reads the real ``/metrics`` of a served app (``tests.support.metric_value``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container, build
from orchestrator.domain.clock import WIB, FrozenClock
from orchestrator.domain.events import ORDER_CAPTURED, ORDER_PAID, ORDER_PAYMENT_PENDING
from orchestrator.domain.money import UniqueCodeRange
from orchestrator.settings import DatabaseSettings, UniqueCodeSettings
from orchestrator.store.database import Database
from orchestrator.store.engine import create_engine, migrate
from orchestrator.store.tables import outbox, payout_accounts, review_cases
from orchestrator.telemetry.metrics import Metrics
from orchestrator.telemetry.state import StateSampler
from orchestrator.tls import default_trust
from tests.conftest import create_database, drop_database
from tests.integration.test_failover import Stack, sims  # noqa: F401
from tests.integration.test_provider_webhooks import (  # noqa: F401
    deliveries,
    midtrans_body,
    order_and_attempt,
    settled_quietly,
    sim_post,
    stack,
    wait_for,
)
from tests.support import free_port, metric_value, new_merchant, new_ops_token, order_body, serve

CAPTURED = "lunas_orders_captured_total"
LAG = "lunas_webhook_receive_lag_seconds"
SAMPLED = "lunas_state_sampled_timestamp_seconds"


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def scrape(client: httpx.AsyncClient) -> bytes:
    r = await client.get("/metrics")
    assert r.status_code == 200
    return r.content


async def test_capture_outcomes_tell_refused_requests_from_lunas_failing(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    before = await scrape(client)
    ok = await client.post("/v1/orders", json=order_body("TEL-1"), headers={**m.headers, **key()})
    assert ok.status_code == 201, ok.text
    # The request is wrong: invalid input, no key, a merchant order id used twice.
    bad = await client.post("/v1/orders", json=order_body("has a space"),
                            headers={**m.headers, **key()})
    assert bad.status_code == 422, bad.text
    nokey = await client.post("/v1/orders", json=order_body("TEL-2"), headers=m.headers)
    assert nokey.status_code == 400, nokey.text
    again = await client.post("/v1/orders", json=order_body("TEL-1"),
                              headers={**m.headers, **key()})
    assert again.status_code == 409, again.text
    after = await scrape(client)

    def moved(outcome: str, rail: str) -> float:
        labels = {"outcome": outcome, "rail": rail}
        return metric_value(after, CAPTURED, **labels) - metric_value(before, CAPTURED, **labels)

    assert moved("created", "manual_transfer") == 1
    assert moved("refused", "manual_transfer") == 2
    assert moved("refused", "unknown") == 1  # refused before the body was read
    assert moved("error", "manual_transfer") == moved("error", "unknown") == 0


async def test_a_capture_lunas_cannot_serve_for_its_database_is_counted_as_an_error(
    container: Container,
) -> None:
    dead = build(replace(container.settings, database=DatabaseSettings(
        url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere")))
    try:
        async with serve(dead) as url, httpx.AsyncClient(verify=default_trust(), base_url=url) as c:
            r = await c.post("/v1/orders", json=order_body("DB-DOWN"),
                             headers={"Authorization": "Bearer lunas_sk_x", **key()})
            assert r.status_code == 503, r.text
            exposition = await scrape(c)  # the sampled gauges fail; the counters still answer
        assert metric_value(exposition, CAPTURED, outcome="error", rail="unknown") == 1
        assert metric_value(exposition, CAPTURED, outcome="refused", rail="unknown") == 0
        # Never sampled: LunasStateSamplerStale reads 0 as older than any threshold.
        assert metric_value(exposition, SAMPLED) == 0
    finally:
        await dead.close()


async def test_a_full_code_range_shows_in_the_pool_gauge_and_captures_as_unavailable(
    container: Container,
) -> None:
    narrow = build(replace(container.settings,
                           unique_codes=UniqueCodeSettings(codes=UniqueCodeRange(low=1, high=5))))
    try:
        m = await new_merchant(narrow)
        async with narrow.db.read() as conn:
            account = (await conn.execute(sa.select(payout_accounts.c.id).where(
                payout_accounts.c.account_number == m.account_number))).scalar_one()
        async with serve(narrow) as url, httpx.AsyncClient(verify=default_trust(),
                                                           base_url=url) as c:
            async def capture(amount: int) -> int:
                r = await c.post("/v1/orders", json=order_body(f"POOL-{uuid.uuid4().hex}", amount),
                                 headers={**m.headers, **key()})
                return r.status_code

            assert [await capture(77_000) for _ in range(3)] == [201] * 3
            await narrow.state_sampler.refresh(force=True)
            partly = await scrape(c)
            statuses = await asyncio.gather(*[capture(77_000) for _ in range(4)])
            assert sorted(statuses) == [201, 201, 503, 503]
            assert await capture(90_000) == 201  # another amount has a range of its own
            await narrow.state_sampler.refresh(force=True)
            full = await scrape(c)
        pool = "lunas_unique_code_pool_used_ratio"
        assert metric_value(partly, pool, account=account) == 0.6
        assert metric_value(full, pool, account=account) == 1.0
        assert metric_value(full, "lunas_unique_codes_held", account=account) == 6
        assert m.account_number not in full.decode()  # labelled by id, never by number
        assert metric_value(full, CAPTURED, outcome="unavailable", rail="manual_transfer") == 2
        assert metric_value(full, "lunas_unique_codes_exhausted_total",
                            rail="manual_transfer") == 2
    finally:
        await narrow.close()


async def test_paused_and_maintained_routes_show_in_the_route_gauge(
    stack: Stack,  # noqa: F811
) -> None:
    c = stack.container
    ops = {"Authorization": f"Bearer {await new_ops_token(c)}"}
    blocked = "lunas_route_blocked"
    now, paused, maintained = datetime.now(UTC), "va:xendit:permata", "ewallet:midtrans:shopeepay"
    r = await stack.client.post(f"/v1/ops/routes/{paused}/pause", headers=ops,
                                json={"reason": "Permata host-to-host down"})
    assert r.status_code == 200, r.text
    window = await stack.client.post("/v1/ops/maintenance", headers=ops, json={
        "route": maintained, "starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(), "reason": "wallet upgrade"})
    assert window.status_code == 201, window.text
    try:
        await c.state_sampler.refresh(force=True)
        during = await scrape(stack.client)
    finally:
        await stack.client.delete(f"/v1/ops/maintenance/{window.json()['id']}", headers=ops,
                                  params={"reason": "test over"})
        await stack.client.post(f"/v1/ops/routes/{paused}/resume", headers=ops,
                                json={"reason": "test over"})
    await c.state_sampler.refresh(force=True)
    after = await scrape(stack.client)
    assert metric_value(during, blocked, route=paused, reason="paused") == 1
    assert metric_value(during, blocked, route=paused, reason="maintenance") == 0
    assert metric_value(during, blocked, route=maintained, reason="maintenance") == 1
    assert metric_value(during, blocked, route="va:midtrans:permata", reason="paused") == 0
    # Cleared, not gone: a configured route is always reported, 0 when nothing blocks it.
    lines = after.decode().splitlines()
    for route, reason in [(paused, "paused"), (maintained, "maintenance")]:
        assert any(ln.startswith(blocked + "{") and f'route="{route}"' in ln
                   and f'reason="{reason}"' in ln and ln.endswith(" 0.0") for ln in lines)


async def test_webhook_receive_lag_is_measured_from_the_providers_event_time(
    stack: Stack,  # noqa: F811
) -> None:
    before = await scrape(stack.client)
    # A Xendit VA paid callback, sent by the simulator as soon as the customer pays.
    _, va = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": va.id, "amount": va.transfer_amount})
    await wait_for(deliveries(stack, va.id), 1)
    # A Midtrans settlement that reaches Lunas ten minutes after the customer paid, then its
    # repeat (not measured again: a repeat times the provider's retries, not the event).
    _, qr = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    paid_at = datetime.now(WIB) - timedelta(minutes=10)
    late = {**midtrans_body(qr, status="settlement", code="200", txid=str(uuid.uuid4()),
                            key=stack.container.settings.providers.midtrans_server_key),
            "settlement_time": paid_at.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        r = await stack.client.post("/v1/webhooks/midtrans", content=json.dumps(late))
        assert r.status_code == 200, r.text
    after = await scrape(stack.client)

    def moved(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert moved(f"{LAG}_count", provider="xendit") == 1
    assert 0 <= moved(f"{LAG}_sum", provider="xendit") < 30
    # The late settlement lands between 5 and 15 minutes; the simulator's own pending
    # notification for the new QR (stamped with its creation) is also measured, within seconds.
    assert moved(f"{LAG}_bucket", provider="midtrans", le="900.0") - moved(
        f"{LAG}_bucket", provider="midtrans", le="300.0") == 1
    assert moved(f"{LAG}_count", provider="midtrans") <= 2
    await settled_quietly(stack, qr.id)
    await settled_quietly(stack, va.id)


async def sampled(table: sa.Table, rows: list[dict[str, object]], now: datetime) -> bytes:
    """What the api's sampler reports, at ``now``, for a database whose ``table`` holds only
    ``rows`` (a private one: the shared database holds every other test's rows)."""
    url = await create_database()
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(sa.insert(table), rows)
        metrics = Metrics()
        await StateSampler(Database(engine), metrics, FrozenClock(now)).refresh(force=True)
        return metrics.exposition()
    finally:
        await engine.dispose()
        await drop_database(url)


async def sampled_outbox(rows: list[dict[str, object]], now: datetime) -> bytes:
    """What the api's sampler reports for an outbox holding only ``rows``, at ``now``."""
    return await sampled(outbox, [
        {"event_id": f"evt_{uuid.uuid4().hex}", "event_type": "merchant.webhook",
         "payload": {}, "status": "pending", "attempts": 1, "lease_owner": None,
         "lease_expires_at": None, **row} for row in rows], now)


async def test_outbox_age_is_how_long_a_due_unleased_event_has_waited_for_a_worker() -> None:
    """Not since it was created: an event retried for a day against a merchant endpoint that is
    down would page as stuck workers every time it came due. A leased event is being handled."""
    now = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    retried = {"created_at": now - timedelta(days=1), "available_at": now - timedelta(seconds=30),
               "attempts": 12}
    leased = {"created_at": now - timedelta(hours=2), "available_at": now - timedelta(minutes=10),
              "lease_owner": "worker-1", "lease_expires_at": now + timedelta(seconds=60)}
    not_due = {"created_at": now - timedelta(hours=1), "available_at": now + timedelta(minutes=5)}
    dead = {"status": "dead", "created_at": now - timedelta(days=3),
            "available_at": now - timedelta(days=2)}
    scraped = await sampled_outbox([retried, leased, not_due, dead], now)
    assert metric_value(scraped, SAMPLED) == now.timestamp()  # the sample succeeded, at now
    assert metric_value(scraped, "lunas_outbox_oldest_age_seconds") == 30
    assert metric_value(scraped, "lunas_outbox_backlog") == 2  # retried, leased: due
    assert metric_value(scraped, "lunas_outbox_scheduled") == 1  # not_due
    assert metric_value(scraped, "lunas_outbox_dead_letters") == 1

    # The worker holding the lease died: once it expires the event is claimable again, and it
    # has waited since it became due.
    expired = {**leased, "lease_expires_at": now - timedelta(seconds=1)}
    scraped = await sampled_outbox([retried, expired, not_due], now)
    assert metric_value(scraped, "lunas_outbox_oldest_age_seconds") == 600


async def test_outbox_age_leaves_out_webhooks_waiting_for_an_earlier_one_of_their_order() -> None:
    """An order's webhooks go out one at a time: its ``order.paid``, due twenty minutes ago,
    waits while the endpoint refuses its ``order.payment_pending`` and that one's retries back
    off for hours. No worker could take it, so it is not late for a worker (its merchant's
    retries running out is LunasDeadLetters): it must not page as stuck workers."""
    now = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    order = {"aggregate_id": "ord_1", "merchant_id": "mch_1", "created_at": now - timedelta(
        minutes=20)}
    retrying = {**order, "event_type": ORDER_PAYMENT_PENDING, "attempts": 6,
                "available_at": now + timedelta(hours=2)}
    behind = {**order, "event_type": ORDER_PAID, "attempts": 0,
              "available_at": now - timedelta(minutes=20)}
    job = {**order, "event_type": ORDER_CAPTURED, "attempts": 0,  # not a webhook: not held
           "available_at": now - timedelta(seconds=45)}
    scraped = await sampled_outbox([retrying, behind], now)
    assert metric_value(scraped, "lunas_outbox_oldest_age_seconds") == 0
    assert metric_value(scraped, "lunas_outbox_backlog") == 1  # behind; retrying is scheduled
    assert metric_value(scraped, "lunas_outbox_scheduled") == 1
    scraped = await sampled_outbox([retrying, behind, job], now)
    assert metric_value(scraped, "lunas_outbox_oldest_age_seconds") == 45


async def test_the_oldest_open_review_case_of_each_reason_is_sampled() -> None:
    """LunasReviewCaseWaiting reads it: a customer's money nobody has decided about for a day.
    Every reason is always present (0: none open), resolved cases do not count."""
    now = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    scraped = await sampled(review_cases, [
        {"id": f"rev_{i}", "order_id": None, "reason": reason, "recommended_action": "refund",
         "amount": 150_000, "state": state, "created_at": now - age}
        for i, (reason, state, age) in enumerate([
            ("second_payment", "open", timedelta(hours=30)),
            ("second_payment", "open", timedelta(hours=2)),
            ("second_payment", "resolved", timedelta(days=9)),
            ("payment_after_expiry", "open", timedelta(minutes=5))])], now)
    oldest = "lunas_review_cases_oldest_age_seconds"
    assert metric_value(scraped, oldest, reason="second_payment") == 30 * 3600
    assert metric_value(scraped, oldest, reason="payment_after_expiry") == 300
    assert metric_value(scraped, oldest, reason="amount_mismatch") == 0
    assert metric_value(scraped, "lunas_review_cases_open", reason="second_payment") == 2
    assert metric_value(scraped, "lunas_review_cases_open", reason="amount_mismatch") == 0


async def test_a_failing_sampler_leaves_its_timestamp_behind_while_metrics_still_answer(
    container: Container,
) -> None:
    """The api's /metrics swallows sampler errors, so the sampled gauges freeze at their last
    values; the timestamp of the last good sample is what tells an alert they are stale."""
    metrics = Metrics()
    clock = FrozenClock(datetime(2026, 11, 30, 3, 0, tzinfo=UTC))
    good = StateSampler(container.db, metrics, clock)
    await good.refresh(force=True)
    sampled = metric_value(metrics.exposition(), SAMPLED)
    assert sampled == clock.now().timestamp()

    dead = build(replace(container.settings, database=DatabaseSettings(
        url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere")))
    try:
        clock.advance(timedelta(minutes=10))
        failing = StateSampler(dead.db, metrics, clock)
        with pytest.raises(OSError):  # connection refused: nothing listens there
            await failing.refresh(force=True)
        assert metric_value(metrics.exposition(), SAMPLED) == sampled
    finally:
        await dead.close()
