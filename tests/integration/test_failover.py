"""Failover: checkout keeps getting valid instructions while gateways are down, slow, flapping or
in maintenance; nothing a provider says reaches the customer raw.

Each test runs the real service (a real socket) with both simulators (real sockets), on the
session's PostgreSQL database and Redis, with a breaker policy small enough to trip in a handful
of calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from chaos.sim.runner import Simulators, start_simulators
from orchestrator.bootstrap import Container, build
from orchestrator.domain.money import UniqueCodeRange
from orchestrator.outbox.relay import Relay
from orchestrator.rails import qris
from orchestrator.rails.breaker import BreakerConfig
from orchestrator.settings import ProviderSettings, RedisSettings, Settings, UniqueCodeSettings
from orchestrator.store.tables import outbox, payment_attempts
from orchestrator.tls import default_trust
from tests.support import (
    ShopFixture,
    metric_value,
    new_merchant,
    new_ops_token,
    order_body,
    raw_http_server,
    serve,
)

PROVIDER_WORDS = ("status_code", "status_message", "error_code", "transaction_id",
                  "INVALID_API_KEY", "SERVER_ERROR", "Internal Server Error", "CHANNEL_UNAVAILABLE")


def breaker_policy() -> BreakerConfig:
    return BreakerConfig(minimum_number_of_calls=4, failure_rate_threshold=0.5,
                         slow_call_rate_threshold=0.5, slow_call_duration=timedelta(seconds=0.3),
                         sliding_window=timedelta(seconds=20), permitted_calls_in_half_open=2,
                         wait_in_open=timedelta(seconds=1), max_wait_in_open=timedelta(seconds=2),
                         wait_jitter=0.0)


@dataclass
class Stack:
    container: Container
    sims: Simulators
    url: str
    client: httpx.AsyncClient
    shop: ShopFixture

    async def capture(self, rail: str = "va", channel: str | None = "bca",
                      **extra: Any) -> httpx.Response:
        body: dict[str, Any] = order_body(f"F-{uuid.uuid4().hex[:12]}", 125_000, rail=rail,
                                          **extra)
        if channel is not None:
            body["channel"] = channel
        r = await self.client.post("/v1/orders", json=body, headers={
            **self.shop.headers, "Idempotency-Key": str(uuid.uuid4())})
        for word in PROVIDER_WORDS:  # nothing a provider says reaches the customer raw
            assert word not in r.text, r.text
        return r

    async def fault(self, provider: str, **fault: Any) -> None:
        sim = self.sims.xendit if provider == "xendit" else self.sims.midtrans
        async with httpx.AsyncClient(verify=default_trust()) as c:
            r = await c.post(f"{sim.control_url}/faults", json=fault)
            assert r.status_code < 300, r.text

    async def calls(self, provider: str, operation: str = "create") -> int:
        sim = self.sims.xendit if provider == "xendit" else self.sims.midtrans
        async with httpx.AsyncClient(verify=default_trust()) as c:
            rows = (await c.get(f"{sim.control_url}/calls")).json()
        return sum(r["count"] for r in rows if r["operation"] == operation)

    async def call_times(self, provider: str, since: float, operation: str = "create"
                         ) -> list[float]:
        """When each request reached the provider (wall clock), oldest first."""
        sim = self.sims.xendit if provider == "xendit" else self.sims.midtrans
        async with httpx.AsyncClient(verify=default_trust()) as c:
            rows = (await c.get(f"{sim.control_url}/calls/log",
                                params={"operation": operation, "since": since})).json()
        return sorted(r["at"] for r in rows)


def gateway_settings(base: Settings, sims: Simulators, **providers: Any) -> Settings:
    return replace(
        base,
        providers=ProviderSettings(midtrans_url=sims.midtrans.data_url,
                                   xendit_url=sims.xendit.data_url,
                                   call_timeout=timedelta(seconds=0.8),
                                   capture_budget=timedelta(seconds=2.5), **providers),
        breaker=breaker_policy(),
        redis=RedisSettings(url=base.redis.url,
                            key_prefix=f"{base.redis.key_prefix}{uuid.uuid4().hex[:8]}:"),
    )


@pytest.fixture
async def sims() -> AsyncIterator[Simulators]:
    s = await start_simulators()
    yield s
    await s.stop()


@pytest.fixture
async def stack(container: Container, sims: Simulators) -> AsyncIterator[Stack]:
    c = build(gateway_settings(container.settings, sims))
    await c.start()
    shop = await new_merchant(c)
    try:
        async with serve(c) as url, httpx.AsyncClient(verify=default_trust(),
                                                      base_url=url, timeout=30) as client:
            yield Stack(c, sims, url, client, shop)
    finally:
        await c.close()


async def test_healthy_gateways_serve_the_first_route(stack: Stack) -> None:
    for rail, channel, served in [("va", "bca", "va:xendit:bca"),
                                  ("qris", None, "qris:midtrans:qris"),
                                  ("ewallet", "gopay", "ewallet:midtrans:gopay"),
                                  ("ewallet", "ovo", "ewallet:xendit:ovo")]:
        r = await stack.capture(rail, channel)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["status"] == "awaiting_payment"
        assert body["routing"]["served_by"] == served and body["routing"]["fallback"] is False
        pay = body["payment"]
        assert pay["route"]["provider"] == served.split(":")[1]
        expected = {"bca": "transfer_to_va", "qris": "scan_qr", "gopay": "open_link",
                    "ovo": "approve_in_app"}[channel or rail]
        assert pay["action"] == expected
        if expected == "scan_qr":
            qris.parse(pay["qr_string"])  # a valid EMVCo payload with a correct CRC


async def test_primary_down_every_order_is_served_by_the_secondary(stack: Stack) -> None:
    await stack.fault("xendit", kind="down")
    replies = [await stack.capture() for _ in range(12)]
    assert [r.status_code for r in replies] == [201] * 12
    assert {r.json()["routing"]["served_by"] for r in replies} == {"va:midtrans:bca"}
    assert all(r.json()["payment"]["va_number"] for r in replies)
    tried = [r.json()["routing"]["tried"][0] for r in replies]
    # The breaker opens within a handful of calls; after that xendit is skipped without a call.
    first_skip = next(i for i, t in enumerate(tried) if t["outcome"] == "skipped")
    assert first_skip <= 5, tried
    assert all(t["outcome"] == "skipped" and "breaker" in t["reason"] for t in tried[first_skip:])
    assert stack.container.breakers.get("va:xendit:bca").state.value == "open"
    # What an SRE sees: failed creates on the dead route until its breaker opened, every order
    # served by the secondary, and the calls to each provider timed by outcome.
    seen = (await stack.client.get("/metrics")).content
    attempts = "lunas_payment_attempts_total"
    assert metric_value(seen, attempts, route="va:xendit:bca", outcome="failed") == first_skip
    assert metric_value(seen, attempts, route="va:midtrans:bca", outcome="served") == 12
    calls = "lunas_provider_call_seconds_count"
    assert metric_value(seen, calls, provider="midtrans", operation="create",
                        outcome="answered") == 12
    assert metric_value(seen, calls, provider="xendit", operation="create",
                        outcome="no_answer") >= first_skip


async def test_every_gateway_down_falls_back_to_manual_transfer(stack: Stack) -> None:
    await stack.fault("xendit", kind="down")
    await stack.fault("midtrans", kind="down")
    r = await stack.capture()
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["routing"]["served_by"] == "manual_transfer:bank:bank"
    assert body["payment"]["account_number"] == stack.shop.account_number
    assert body["payment"]["transfer_amount"] > 125_000
    assert [t["route"] for t in body["routing"]["tried"]] == [
        "va:xendit:bca", "va:midtrans:bca", "qris:midtrans:qris", "qris:xendit:qris",
        "manual_transfer:bank:bank"]
    assert all(t["reason"] for t in body["routing"]["tried"][:-1])


@contextlib.asynccontextmanager
async def deferred_into_a_full_pool(container: Container, sims: Simulators
                                    ) -> AsyncIterator[tuple[Stack, httpx.Response]]:
    """A service whose unique codes (two) are all held by manual transfers of 125,000, every
    gateway down, and the VA order it captured then: deferred (202), its fallback to manual
    transfer finding no free amount."""
    narrow = build(replace(gateway_settings(container.settings, sims),
                           unique_codes=UniqueCodeSettings(codes=UniqueCodeRange(low=1, high=2))))
    await narrow.start()
    try:
        shop = await new_merchant(narrow)
        async with serve(narrow) as url, httpx.AsyncClient(verify=default_trust(),
                                                           base_url=url, timeout=30) as client:
            stack = Stack(narrow, sims, url, client, shop)
            for _ in range(2):  # the whole range of 125,000 held by manual transfers
                assert (await stack.capture("manual_transfer", None)).status_code == 201
            await stack.fault("xendit", kind="down")
            await stack.fault("midtrans", kind="down")
            r = await stack.capture()
            assert (r.status_code, r.json()["status"]) == (202, "captured"), r.text
            yield stack, r
    finally:
        await narrow.close()


async def test_a_fallback_that_finds_every_code_held_is_counted_as_exhaustion(
    container: Container, sims: Simulators
) -> None:
    """Every gateway down and every transfer amount near the order's held: the order stays
    captured (202, issued later), and the pool's exhaustion counter sees it as it sees a
    manual-transfer capture refused. It did not: the capture looked like any deferred one."""
    async with deferred_into_a_full_pool(container, sims) as (stack, _):
        seen = (await stack.client.get("/metrics")).content
    assert metric_value(seen, "lunas_unique_codes_exhausted_total", rail="va") == 1
    assert metric_value(seen, "lunas_orders_captured_total", outcome="deferred", rail="va") == 1


async def test_a_deferred_issuance_retried_into_a_full_pool_is_counted_each_try(
    container: Container, sims: Simulators
) -> None:
    """The worker retries a gateway order left captured (``on_order_captured``): its routes
    still down, the fallback to manual transfer finds every code still held. The capture
    counted that as the pool running dry; each retry did not, so the counter stopped at the
    capture while the pool stayed exhausted for as long as the worker kept trying."""
    from orchestrator.domain.errors import UniqueCodesExhausted
    from orchestrator.outbox.relay import OutboxEvent

    async with deferred_into_a_full_pool(container, sims) as (stack, r):
        async with stack.container.db.read() as conn:
            row = (await conn.execute(sa.select(outbox).where(
                outbox.c.aggregate_id == r.json()["id"],
                outbox.c.event_type == "order.captured"))).one()
        for tries in (1, 2):
            event = OutboxEvent(id=row.id, event_id=row.event_id, event_type=row.event_type,
                                aggregate_id=row.aggregate_id, merchant_id=row.merchant_id,
                                payload=row.payload, attempts=tries, created_at=row.created_at)
            with pytest.raises(UniqueCodesExhausted):  # the relay tries it again later
                await stack.container.gateway_jobs.on_order_captured(event)
        seen = (await stack.client.get("/metrics")).content
    assert metric_value(seen, "lunas_unique_codes_exhausted_total", rail="va") == 3


async def test_slow_provider_opens_its_breaker_on_slow_calls(stack: Stack) -> None:
    await stack.fault("xendit", kind="slow", latency_ms=450)
    replies = [await stack.capture() for _ in range(10)]
    assert all(r.status_code == 201 for r in replies)
    served = [r.json()["routing"]["served_by"] for r in replies]
    assert served[0] == "va:xendit:bca"  # slow but successful: still served
    # Then the slow-call rate tripped xendit's breaker and later orders went elsewhere (which
    # route depends on how fast the others are on a loaded machine, so it is not asserted).
    assert stack.container.breakers.get("va:xendit:bca").state.value == "open"
    assert served[-1] != "va:xendit:bca"
    assert replies[-1].json()["routing"]["tried"][0] == {
        "route": "va:xendit:bca", "outcome": "skipped",
        "reason": "provider is failing; circuit breaker open"}


async def test_flapping_provider_never_costs_a_checkout(stack: Stack) -> None:
    await stack.fault("xendit", kind="error_rate", probability=0.5, status=503)
    replies = await asyncio.gather(*[stack.capture() for _ in range(16)])
    assert all(r.status_code == 201 for r in replies), [r.text for r in replies]
    assert {r.json()["routing"]["served_by"] for r in replies} <= {"va:xendit:bca",
                                                                   "va:midtrans:bca"}


async def test_a_throttled_provider_fails_checkouts_over_but_never_opens_its_breaker(
    stack: Stack,
) -> None:
    """Xendit answers every create 429: it is up and wants fewer requests. Each checkout fails
    over to the next route (the customer must not wait on a rate limit), and the breaker, whose
    job is to say a provider is down, stays closed with no failure counted, as status reads
    already treat a 429. Before: every throttled create counted as a failure and the breaker
    opened, failing every later checkout over, even after the throttle passed."""
    await stack.fault("xendit", kind="rate_limit", operation="create", retry_after_s=1)
    replies = [await stack.capture() for _ in range(10)]
    assert all(r.status_code == 201 for r in replies), [r.text for r in replies]
    for r in replies:
        routing = r.json()["routing"]
        assert routing["served_by"] == "va:midtrans:bca"
        assert routing["tried"][0] == {"route": "va:xendit:bca", "outcome": "failed",
                                       "reason": "provider is rate limiting"}
    breaker = stack.container.breakers.get("va:xendit:bca")
    assert breaker.state.value == "closed"
    assert breaker.snapshot().failures == 0


async def test_timeout_after_success_leaves_no_uncancelled_second_instrument(
    stack: Stack,
) -> None:
    await stack.fault("xendit", kind="timeout_after_success", operation="create")
    r = await stack.capture()
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["routing"]["served_by"] == "va:midtrans:bca"
    assert body["routing"]["tried"][0]["outcome"] == "unknown"
    async with stack.container.db.read() as conn:
        attempts = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == body["id"]).order_by(
            payment_attempts.c.created_at))).all()
    assert [(a.provider, a.state) for a in attempts] == [("xendit", "unknown"),
                                                        ("midtrans", "active")]
    orphan = attempts[0]
    # the orphan VA exists at xendit and is payable
    async with httpx.AsyncClient(verify=default_trust()) as c:
        found = (await c.get(f"{stack.sims.xendit.control_url}/resources",
                             params={"reference": orphan.id})).json()
    assert found, "the simulator should hold the VA whose reply never arrived"
    await clear_faults(stack)
    await run_relay(stack.container, until=lambda: attempt_state(stack, orphan.id),
                    want="superseded")
    async with httpx.AsyncClient(verify=default_trust()) as c:
        va = (await c.get(f"{stack.sims.xendit.control_url}/resources",
                          params={"reference": orphan.id})).json()
    assert json.dumps(va).count("INACTIVE") >= 1, va  # cancelled at the provider


async def test_maintenance_window_skips_the_route_before_the_provider_fails(
    stack: Stack,
) -> None:
    ops = {"Authorization": f"Bearer {await new_ops_token(stack.container)}"}
    now = datetime.now(UTC)
    r = await stack.client.post("/v1/ops/maintenance", headers=ops, json={
        "route": "va:xendit:*", "starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(), "reason": "xendit VA upgrade"})
    assert r.status_code == 201
    try:
        before = await stack.calls("xendit")
        reply = await stack.capture()
        assert reply.json()["routing"]["served_by"] == "va:midtrans:bca"
        assert "maintenance" in reply.json()["routing"]["tried"][0]["reason"]
        assert await stack.calls("xendit") == before  # no call reached the provider
        rails = (await stack.client.get("/v1/rails", headers=stack.shop.headers)).json()["data"]
        bca = next(x for x in rails if (x["rail"], x["channel"]) == ("va", "bca"))
        assert bca["available"] is True  # midtrans still serves BCA VA
        xendit_only = next(x for x in rails if (x["rail"], x["channel"]) == ("ewallet", "ovo"))
        assert xendit_only["available"] is True  # the window covers VA only
    finally:  # the database is shared by the session's tests: leave no window behind
        await stack.client.delete(f"/v1/ops/maintenance/{r.json()['id']}", headers=ops,
                                  params={"reason": "test done"})


async def test_rails_endpoint_greys_out_what_is_down(stack: Stack) -> None:
    await stack.fault("xendit", kind="down")
    for _ in range(6):
        await stack.capture("ewallet", "ovo")  # only xendit serves OVO: its breaker trips
    rails = (await stack.client.get("/v1/rails", headers=stack.shop.headers)).json()["data"]
    ovo = next(x for x in rails if (x["rail"], x["channel"]) == ("ewallet", "ovo"))
    assert ovo["available"] is False and "breaker" in ovo["reason"]
    manual = next(x for x in rails if x["rail"] == "manual_transfer")
    assert manual["available"] is True


async def captured_with_every_gateway_down(stack: Stack) -> dict[str, Any]:
    """An order of a merchant who allows no fallback, captured (202) while both gateways are
    down, so its issuance is deferred to the worker; the gateways' faults are left on."""
    from orchestrator.store.tables import merchants

    async with stack.container.db.transaction() as conn:
        await conn.execute(merchants.update().where(merchants.c.id == stack.shop.merchant_id)
                           .values(allow_fallback=False))
    await stack.fault("xendit", kind="down")
    await stack.fault("midtrans", kind="down")
    r = await stack.capture()
    assert r.status_code == 202, r.text
    return dict(r.json())


async def test_no_fallback_keeps_the_order_captured_and_issues_it_on_recovery(
    stack: Stack,
) -> None:
    body = await captured_with_every_gateway_down(stack)
    assert body["status"] == "captured" and body["payment"] is None
    assert body["routing"]["served_by"] is None
    await clear_faults(stack)
    # Deferred issuance: the worker acts once the request's own issuance can no longer run.
    async with stack.container.db.transaction() as conn:
        await conn.execute(outbox.update().where(outbox.c.aggregate_id == body["id"])
                           .values(available_at=datetime.now(UTC)))
    await run_relay(stack.container, until=lambda: order_state(stack, body["id"]),
                    want="awaiting_payment")
    read = (await stack.client.get(f"/v1/orders/{body['id']}", headers=stack.shop.headers))
    assert read.json()["payment"]["va_number"]
    async with stack.container.db.read() as conn:
        [told] = (await conn.execute(sa.select(outbox.c.payload).where(
            outbox.c.aggregate_id == body["id"],
            outbox.c.event_type == "order.awaiting_payment"))).scalars().all()
    # The merchant hears the deadline as the order API gives it, UTC and WIB.
    order = read.json()
    assert (told["expires_at"], told["paid_at"], told["display"]) == (
        order["expires_at"], None, order["display"])


async def test_customer_switches_method_and_the_old_instrument_is_cancelled(
    stack: Stack,
) -> None:
    first = (await stack.capture("ewallet", "gopay")).json()
    r = await stack.client.post(f"/v1/orders/{first['id']}/payment", headers=stack.shop.headers,
                                json={"rail": "va", "channel": "bni"})
    assert r.status_code == 201, r.text
    assert r.json()["payment"]["route"]["channel"] == "bni"
    old = first["payment"]["attempt_id"]
    assert await attempt_state(stack, old) == "superseded"
    await run_relay(stack.container, until=lambda: midtrans_status(stack, old), want="cancel")


async def test_a_switch_the_order_outran_is_refused_and_its_instrument_withdrawn(
    stack: Stack,
) -> None:
    """The merchant cancelled the order while the switch's QRIS was being created: the switch
    is refused (409 switch_not_applied), not answered 201 with instructions for a cancelled
    order, and the QRIS served meanwhile is not left live."""
    first = (await stack.capture("va", "bca")).json()
    await stack.fault("midtrans", kind="slow", latency_ms=600)
    switching = asyncio.create_task(stack.client.post(
        f"/v1/orders/{first['id']}/payment", headers=stack.shop.headers, json={"rail": "qris"}))
    await asyncio.sleep(0.25)  # the QRIS charge is in flight
    cancelled = await stack.client.post(f"/v1/orders/{first['id']}/cancel",
                                        headers=stack.shop.headers)
    assert cancelled.status_code == 200, cancelled.text
    switched = await switching
    assert switched.status_code == 409, switched.text
    assert switched.json()["code"] == "switch_not_applied"
    async with stack.container.db.read() as conn:
        states = dict((await conn.execute(sa.select(
            payment_attempts.c.rail, payment_attempts.c.state).where(
            payment_attempts.c.order_id == first["id"]))).all())
    assert states["qris"] != "active", states


async def test_two_switches_to_an_e_wallet_at_once_make_one_charge(stack: Stack) -> None:
    """Regression (review): the customer taps "pay with OVO" twice. Both switches read the
    order's e-wallet charges before either had journalled its own, so both asked Xendit: two
    charges, two prompts on the customer's phone while the first create was still unanswered
    (had it gone unanswered for good, a charge nobody could read or void beside another). The
    check is made again with the attempt's journal row, under the order's lock: the second
    switch is refused as a later one is, and Xendit makes one charge."""
    from orchestrator.store.tables import merchants

    async with stack.container.db.transaction() as conn:
        await conn.execute(merchants.update().where(merchants.c.id == stack.shop.merchant_id)
                           .values(allow_fallback=False))
    first = (await stack.capture("va", "bca")).json()
    before = await stack.calls("xendit")
    await stack.fault("xendit", kind="slow", latency_ms=600, operation="create", channel="ovo")

    def switch() -> Any:
        return stack.client.post(f"/v1/orders/{first['id']}/payment",
                                 headers=stack.shop.headers,
                                 json={"rail": "ewallet", "channel": "ovo"})

    taps = await asyncio.gather(switch(), switch())
    served, again = sorted(taps, key=lambda r: r.status_code)
    assert (served.status_code, again.status_code) == (201, 409), [r.text for r in taps]
    assert again.json()["code"] == "ewallet_charge_unconfirmed", again.text
    assert "never charged twice" in again.json()["detail"]
    assert served.json()["payment"]["route"]["channel"] == "ovo"
    assert await stack.calls("xendit") - before == 1
    assert await attempt_state(stack, first["payment"]["attempt_id"]) == "superseded"


async def test_redis_lost_mid_run_the_service_keeps_serving(
    container: Container, sims: Simulators
) -> None:
    from tests.integration.test_breaker_cluster import TcpProxy

    proxy = TcpProxy(("127.0.0.1", 6379))
    await proxy.start()
    settings = gateway_settings(container.settings, sims)
    settings = replace(settings, redis=replace(settings.redis,
                                               url=f"redis://127.0.0.1:{proxy.port}/0"))
    c = build(settings)
    await c.start()
    try:
        shop = await new_merchant(c)
        async with serve(c) as url, httpx.AsyncClient(verify=default_trust(),
                                                      base_url=url, timeout=30) as client:
            stack = Stack(c, sims, url, client, shop)
            assert (await stack.capture()).status_code == 201
            await proxy.stop()
            await stack.fault("xendit", kind="down")
            replies = [await stack.capture() for _ in range(8)]
            assert all(r.status_code == 201 for r in replies)
            assert replies[-1].json()["routing"]["served_by"] == "va:midtrans:bca"
            metrics = (await client.get("/metrics")).text
            assert "lunas_breaker_redis_fallback 1.0" in metrics
    finally:
        await c.close()


async def clear_faults(stack: Stack) -> None:
    async with httpx.AsyncClient(verify=default_trust()) as c:
        for sim in (stack.sims.xendit, stack.sims.midtrans):
            await c.delete(f"{sim.control_url}/faults")


async def attempt_state(stack: Stack, attempt_id: str) -> str:
    async with stack.container.db.read() as conn:
        return str((await conn.execute(sa.select(payment_attempts.c.state).where(
            payment_attempts.c.id == attempt_id))).scalar_one())


async def order_state(stack: Stack, order_id: str) -> str:
    from orchestrator.store.tables import orders
    async with stack.container.db.read() as conn:
        return str((await conn.execute(sa.select(orders.c.state).where(
            orders.c.id == order_id))).scalar_one())


async def midtrans_status(stack: Stack, order_id: str) -> str:
    async with httpx.AsyncClient(verify=default_trust()) as c:
        r = await c.get(f"{stack.sims.midtrans.control_url}/transactions/{order_id}")
        return str(r.json().get("transaction_status", ""))


async def run_relay(container: Container, *, until: Any, want: str,
                    timeout: float = 10.0) -> None:
    """Run the worker's relay in-process until ``await until() == want``."""
    from orchestrator.notify.delivery import MerchantWebhookHandler, merchant_webhook_handlers

    handler = MerchantWebhookHandler(container.db.engine, container.http,
                                     timedelta(seconds=2))
    relay = Relay(container.db.engine,
                  {**merchant_webhook_handlers(handler), **container.gateway_jobs.handlers(),
                   **container.provider_webhooks.handlers(),
                   **container.settled_reads.handlers()},
                  replace(container.settings.outbox, backoff=(timedelta(seconds=0.2),) * 5),
                  f"test-{uuid.uuid4().hex[:6]}", container.clock)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        await relay.run_once()
        if await until() == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"did not reach {want!r}: {await until()!r}")


async def test_ops_force_a_breaker_open_and_release_it_audited(stack: Stack) -> None:
    ops = {"Authorization": f"Bearer {await new_ops_token(stack.container)}"}
    r = await stack.client.post("/v1/ops/routes/va:xendit:bca/breaker", headers=ops,
                                json={"action": "force_open", "reason": "xendit incident #42"})
    assert r.status_code == 200 and r.json()["breaker"] == "forced_open"
    reply = (await stack.capture()).json()
    assert reply["routing"]["served_by"] == "va:midtrans:bca"
    routes = (await stack.client.get("/v1/ops/routes", headers=ops)).json()["data"]
    assert next(x for x in routes if x["route"] == "va:xendit:bca")["breaker"] == "forced_open"
    # What LunasBreakerForcedForHours reads: an override nobody releases files a ticket.
    forced = (await stack.client.get("/metrics")).content
    assert metric_value(forced, "lunas_breaker_state", route="va:xendit:bca",
                        state="forced_open") == 1
    r = await stack.client.post("/v1/ops/routes/va:xendit:bca/breaker", headers=ops,
                                json={"action": "release", "reason": "resolved"})
    assert r.json()["breaker"] == "closed"
    released = (await stack.client.get("/metrics")).content
    assert metric_value(released, "lunas_breaker_state", route="va:xendit:bca",
                        state="forced_open") == 0
    assert (await stack.capture()).json()["routing"]["served_by"] == "va:xendit:bca"
    async with stack.container.db.read() as conn:
        from orchestrator.store.tables import audit_log
        actions = (await conn.execute(sa.select(audit_log.c.action).where(
            audit_log.c.subject_id == "va:xendit:bca",
            audit_log.c.action.like("breaker.%")).order_by(audit_log.c.id))).scalars().all()
    assert actions[-2:] == ["breaker.force_open", "breaker.release"]


async def test_two_replicas_open_together_and_recovery_sees_only_the_permitted_trials(
    container: Container, sims: Simulators
) -> None:
    settings = gateway_settings(container.settings, sims)  # one Redis prefix for both
    a, b = build(settings), build(settings)
    await a.start()
    await b.start()
    try:
        shop = await new_merchant(a)
        async with serve(a) as url_a, serve(b) as url_b, \
                httpx.AsyncClient(verify=default_trust(), base_url=url_a, timeout=30) as ca, \
                httpx.AsyncClient(verify=default_trust(), base_url=url_b, timeout=30) as cb:
            sa_, sb = Stack(a, sims, url_a, ca, shop), Stack(b, sims, url_b, cb, shop)
            await sa_.fault("xendit", kind="error_rate", status=500, operation="create")
            for _ in range(6):  # only replica A sees the failures
                await sa_.capture()
            assert a.breakers.get("va:xendit:bca").state.value == "open"
            for _ in range(50):
                if b.breakers.get("va:xendit:bca").state.value == "open":
                    break
                await asyncio.sleep(0.02)
            assert b.breakers.get("va:xendit:bca").state.value == "open"
            before = await sb.calls("xendit")
            first_b = (await sb.capture()).json()
            assert first_b["routing"]["tried"][0]["outcome"] == "skipped"
            assert await sb.calls("xendit") == before  # B never called the dead provider
            # Recovery: after the open wait both replicas go half-open; a burst from both sees
            # only the permitted number of trial calls at the provider.
            await clear_faults(sa_)
            await sa_.fault("xendit", kind="slow", latency_ms=300)  # keep trials in flight
            await asyncio.sleep(2.3)
            burst = time.time()
            await asyncio.gather(*[s.capture() for s in (sa_, sb) for _ in range(10)])
            # The trials are slow calls, so the breaker opens again behind them; a later
            # half-open round (after the trials' 0.3 s and a 1 s wait) may admit trials of its
            # own when the two servers, one event loop, spread this burst past it on a busy
            # machine. Count what one round admitted: calls within a second of the first.
            times = await sa_.call_times("xendit", since=burst)
            trials = [t for t in times if t < times[0] + 1.0]
            assert len(trials) == breaker_policy().permitted_calls_in_half_open, times
    finally:
        await a.close()
        await b.close()


@contextlib.asynccontextmanager
async def xendit_with_odd_charges() -> AsyncIterator[str]:
    """A Xendit double whose e-wallet charge answers are about the right charge but carry
    ``actions`` as a list (Xendit documents an object)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length")), 0)
        sent = json.loads(await reader.readexactly(length)) if length else {}
        body = json.dumps({"id": "ewc_odd", "reference_id": sent.get("reference_id"),
                           "charge_amount": sent.get("amount"), "status": "PENDING",
                           "channel_code": sent.get("channel_code"),
                           "actions": [{"url": "https://pay.example"}]}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    async with raw_http_server(answer) as url:
        yield url


async def test_an_answer_of_an_unexpected_shape_is_unknown_and_the_next_route_serves(
    container: Container, sims: Simulators,
) -> None:
    """Regression (review): a Xendit e-wallet charge answered with ``actions`` as a list made
    the adapter raise AttributeError, which no layer translated: the router stopped at the first
    route, the checkout got a 202 without instructions although QRIS and manual transfer were
    healthy, and the charge Xendit made stayed a ``creating`` attempt."""
    async with xendit_with_odd_charges() as odd_url:
        base = gateway_settings(container.settings, sims)
        c = build(replace(base, providers=replace(base.providers, xendit_url=odd_url)))
        await c.start()
        try:
            shop = await new_merchant(c)
            async with serve(c) as url, httpx.AsyncClient(verify=default_trust(),
                                                          base_url=url, timeout=30) as client:
                r = await Stack(c, sims, url, client, shop).capture("ewallet", "dana")
            assert r.status_code == 201, r.text
            routing = r.json()["routing"]
            assert routing["served_by"] == "qris:midtrans:qris"
            assert routing["tried"][0]["route"] == "ewallet:xendit:dana"
            assert routing["tried"][0]["outcome"] == "unknown"  # verified later, never assumed
            async with c.db.read() as conn:
                states = dict((await conn.execute(sa.select(
                    payment_attempts.c.rail, payment_attempts.c.state).where(
                    payment_attempts.c.order_id == r.json()["id"]))).all())
            assert states == {"ewallet": "unknown", "qris": "active"}
        finally:
            await c.close()


async def test_a_switch_while_deferred_issuance_is_mid_call_leaves_one_live_instrument(
    stack: Stack,
) -> None:
    """Regression (review): an order left ``captured`` (every VA route down, no fallback) is
    being issued by the worker (``on_order_captured``) when the customer switches to QRIS. The
    switch is served first and supersedes what is active (the worker's VA is still
    ``creating``); the worker's VA is then served, and its ``finish`` (not a switch) kept it
    ``active`` beside the QRIS: two live instruments for one order, the VA never cancelled at
    Xendit and never shown to the customer, and a second ``order.awaiting_payment``."""
    from orchestrator.outbox.relay import OutboxEvent

    oid = (await captured_with_every_gateway_down(stack))["id"]
    await clear_faults(stack)
    await stack.fault("xendit", kind="slow", latency_ms=600)  # the worker's VA create is slow
    async with stack.container.db.read() as conn:
        row = (await conn.execute(sa.select(outbox).where(
            outbox.c.aggregate_id == oid, outbox.c.event_type == "order.captured"))).one()
    event = OutboxEvent(id=row.id, event_id=row.event_id, event_type=row.event_type,
                        aggregate_id=row.aggregate_id, merchant_id=row.merchant_id,
                        payload=row.payload, attempts=1, created_at=row.created_at)
    deferred = asyncio.create_task(stack.container.gateway_jobs.on_order_captured(event))
    await asyncio.sleep(0.25)  # the worker's VA is journalled `creating`, its call in flight
    switched = await stack.client.post(f"/v1/orders/{oid}/payment", headers=stack.shop.headers,
                                       json={"rail": "qris"})
    assert switched.status_code == 201, switched.text
    await deferred
    async with stack.container.db.read() as conn:
        attempts = {a.rail: a.state for a in (await conn.execute(sa.select(
            payment_attempts.c.rail, payment_attempts.c.state).where(
            payment_attempts.c.order_id == oid,
            payment_attempts.c.state != "failed"))).all()}
        told = (await conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.aggregate_id == oid,
            outbox.c.event_type == "order.awaiting_payment"))).scalar_one()
    # The customer's choice stands; the VA nobody was shown is superseded (watched, cancelled).
    assert attempts == {"qris": "active", "va": "superseded"}, attempts
    assert told == 1
    read = (await stack.client.get(f"/v1/orders/{oid}", headers=stack.shop.headers)).json()
    assert read["payment"]["attempt_id"] == switched.json()["payment"]["attempt_id"]


async def test_a_capture_whose_instrument_lost_to_a_switch_replays_as_it_answered(
    stack: Stack,
) -> None:
    """Regression (review): the checkout timed out on a slow VA create, found the order by its
    own id and switched to QRIS. The capture's VA, served after the switch, is superseded; the
    capture answered 201 but stored 202 for its key, so a retry of the same request was told
    something else than the first answer."""
    await stack.fault("xendit", kind="slow", latency_ms=600)  # the capture's VA create is slow
    body = order_body(f"F-{uuid.uuid4().hex[:12]}", 125_000, rail="va", channel="bca")
    headers = {**stack.shop.headers, "Idempotency-Key": str(uuid.uuid4())}
    first = asyncio.create_task(stack.client.post("/v1/orders", json=body, headers=headers))
    await asyncio.sleep(0.25)  # the order is durable, its VA call in flight
    found = await stack.client.get("/v1/orders", headers=stack.shop.headers,
                                   params={"merchant_order_id": body["merchant_order_id"]})
    oid = found.json()["data"][0]["id"]
    switched = await stack.client.post(f"/v1/orders/{oid}/payment", headers=stack.shop.headers,
                                       json={"rail": "qris"})
    assert switched.status_code == 201, switched.text
    answered = await first
    again = await stack.client.post("/v1/orders", json=body, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (again.status_code, again.json()) == (answered.status_code, answered.json())
    # What the capture answered says its own instructions are not the live ones.
    assert answered.status_code == 202, answered.text
    assert answered.json()["payment"]["attempt_id"] == switched.json()["payment"]["attempt_id"]


async def test_a_repeat_sent_while_the_capture_is_issuing_never_replays_another_answer(
    stack: Stack,
) -> None:
    """Regression (review): a checkout that times out and sends the same request again while
    the first is still calling the provider was replayed what the key held then, the interim
    202 (``captured``, no instructions) with Idempotent-Replayed, while the first answered 201
    with a VA: one key, two answers. A repeat that comes while the first is unanswered is told
    to send it again (409 idempotency_key_in_flight); once answered, it replays that answer."""
    await stack.fault("xendit", kind="slow", latency_ms=600)  # the capture's VA create is slow
    body = order_body(f"F-{uuid.uuid4().hex[:12]}", 125_000, rail="va", channel="bca")
    headers = {**stack.shop.headers, "Idempotency-Key": str(uuid.uuid4())}
    first = asyncio.create_task(stack.client.post("/v1/orders", json=body, headers=headers))
    while True:  # until the order is durable and its VA call in flight
        found = (await stack.client.get("/v1/orders", headers=stack.shop.headers, params={
            "merchant_order_id": body["merchant_order_id"]})).json()["data"]
        async with stack.container.db.read() as conn:
            creating = found and (await conn.execute(sa.select(payment_attempts.c.id).where(
                payment_attempts.c.order_id == found[0]["id"],
                payment_attempts.c.state == "creating"))).first()
        if creating:
            break
        await asyncio.sleep(0.02)
    meanwhile = await stack.client.post("/v1/orders", json=body, headers=headers)
    answered = await first
    assert answered.status_code == 201, answered.text
    if meanwhile.headers.get("Idempotent-Replayed") == "true":
        assert (meanwhile.status_code, meanwhile.json()) == (201, answered.json())
    else:
        assert meanwhile.status_code == 409, meanwhile.text
        assert meanwhile.json()["code"] == "idempotency_key_in_flight"
        assert meanwhile.headers["Retry-After"] == "1"
    again = await stack.client.post("/v1/orders", json=body, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (again.status_code, again.json()) == (201, answered.json())


async def test_a_capture_that_died_before_answering_is_replayed_as_deferred_once_it_cannot_run(
    stack: Stack,
) -> None:
    """The api died mid-issuance, its reply never sent: its key still holds the pending reply
    written with the order. A repeat while that request could still be running is told to send
    it again; after that, it is answered 202 with the order as stored (the worker issues it)."""
    import msgspec

    from orchestrator.api.orders import _order_request
    from orchestrator.api.schemas import OrderIn
    from orchestrator.domain.checkout import request_fingerprint
    from orchestrator.rails.base import Rail
    from orchestrator.store.tables import idempotency_keys

    body = order_body(f"F-{uuid.uuid4().hex[:12]}", 125_000, rail="va", channel="bca")
    key = str(uuid.uuid4())
    headers = {**stack.shop.headers, "Idempotency-Key": key}
    request = _order_request(msgspec.convert(body, OrderIn))
    capture = stack.container.capture
    async with stack.container.db.transaction() as conn:  # what the request committed
        order = await capture._write_captured(
            conn, stack.shop.merchant_id, key, request_fingerprint(request), request, Rail.VA,
            "bca", datetime.now(UTC) + timedelta(hours=1))
    soon = await stack.client.post("/v1/orders", json=body, headers=headers)
    assert soon.status_code == 409, soon.text
    assert soon.json()["code"] == "idempotency_key_in_flight"
    assert soon.headers["Retry-After"] == "1"  # a checkout sends it again, not gives up
    async with stack.container.db.transaction() as conn:  # the request's time is past
        await conn.execute(idempotency_keys.update().where(idempotency_keys.c.key == key)
                           .values(created_at=datetime.now(UTC) - timedelta(minutes=5)))
    late = await stack.client.post("/v1/orders", json=body, headers=headers)
    assert late.status_code == 202, late.text
    assert late.headers.get("Idempotent-Replayed") == "true"
    assert (late.json()["id"], late.json()["status"], late.json()["payment"]) == (
        order.id, "captured", None)


async def test_an_instrument_served_after_a_cancel_whose_issuer_died_is_cancelled(
    stack: Stack,
) -> None:
    """Regression (review): the merchant cancelled an order while its QRIS was being created;
    the QRIS was served (journalled ``active``), then the api died before ``finish``, the step
    that withdraws an instrument served for a closed order. The cancel had left the attempt
    alone (still ``creating``), and deferred issuance (``on_order_captured``) ignored the order
    once it was no longer ``captured``: a live QRIS at Midtrans for a cancelled order, never
    cancelled, payable by a customer told the order was cancelled."""
    from orchestrator.outbox.relay import OutboxEvent
    from orchestrator.rails.base import Rail
    from orchestrator.store.tables import merchants, orders

    async with stack.container.db.transaction() as conn:
        await conn.execute(merchants.update().where(merchants.c.id == stack.shop.merchant_id)
                           .values(allow_fallback=False))
    ops = {"Authorization": f"Bearer {await new_ops_token(stack.container)}"}
    for route in ("qris:midtrans:qris", "qris:xendit:qris"):  # paused: no breaker counts it
        r = await stack.client.post(f"/v1/ops/routes/{route}/pause", headers=ops,
                                    json={"reason": "test: issue this order later"})
        assert r.status_code == 200, r.text
    captured = await stack.capture("qris", None)
    assert captured.status_code == 202, captured.text  # captured, issued later
    oid = captured.json()["id"]
    r = await stack.client.post("/v1/ops/routes/qris:midtrans:qris/resume", headers=ops,
                                json={"reason": "test: issue it now"})
    assert r.status_code == 200, r.text
    await stack.fault("midtrans", kind="slow", latency_ms=600)
    async with stack.container.db.read() as conn:
        order = (await conn.execute(sa.select(orders).where(orders.c.id == oid))).one()
    # A request issuing the order (the worker's, or a capture's), whose finish never runs.
    issuing = asyncio.create_task(stack.container.issuance.issue(order, rail=Rail.QRIS,
                                                                 channel="qris"))
    while not await _attempts_in(stack, oid, "creating"):
        await asyncio.sleep(0.02)
    cancelled = await stack.client.post(f"/v1/orders/{oid}/cancel", headers=stack.shop.headers)
    assert cancelled.status_code == 200, cancelled.text
    served = await issuing
    assert served.served is not None and served.attempt_id
    async with stack.container.db.read() as conn:
        row = (await conn.execute(sa.select(outbox).where(
            outbox.c.aggregate_id == oid, outbox.c.event_type == "order.captured"))).one()
    await stack.container.gateway_jobs.on_order_captured(OutboxEvent(
        id=row.id, event_id=row.event_id, event_type=row.event_type,
        aggregate_id=row.aggregate_id, merchant_id=row.merchant_id, payload=row.payload,
        attempts=1, created_at=row.created_at))
    assert await attempt_state(stack, served.attempt_id) == "superseded"  # still watched
    await run_relay(stack.container, until=lambda: midtrans_status(stack, served.attempt_id),
                    want="cancel")
    assert await order_state(stack, oid) == "cancelled"


async def _attempts_in(stack: Stack, order_id: str, state: str) -> list[str]:
    async with stack.container.db.read() as conn:
        return list((await conn.execute(sa.select(payment_attempts.c.id).where(
            payment_attempts.c.order_id == order_id,
            payment_attempts.c.state == state))).scalars().all())


async def test_an_order_past_its_deadline_is_never_issued_late(stack: Stack) -> None:
    """Regression (review): deferred issuance (``on_order_captured``) and a switch of method
    issued instructions for an order whose payment deadline had passed but which the expiry
    sweep had not reached yet: a QRIS at Xendit (QR v1 has no expiry of its own), the merchant
    told ``order.awaiting_payment`` for an order about to expire, a payment on it money for a
    person to refund. Past the deadline the order is expiry's to close, not anyone's to issue."""
    from orchestrator.outbox.relay import OutboxEvent
    from orchestrator.store.tables import merchants, orders

    ops = {"Authorization": f"Bearer {await new_ops_token(stack.container)}"}
    paused = ("qris:midtrans:qris", "qris:xendit:qris")
    for route in paused:
        r = await stack.client.post(f"/v1/ops/routes/{route}/pause", headers=ops,
                                    json={"reason": "test: issue this order later"})
        assert r.status_code == 200, r.text
    async with stack.container.db.transaction() as conn:
        await conn.execute(merchants.update().where(merchants.c.id == stack.shop.merchant_id)
                           .values(allow_fallback=False))
    captured = await stack.capture("qris", None)
    assert captured.status_code == 202, captured.text
    oid = captured.json()["id"]
    for route in paused:
        r = await stack.client.post(f"/v1/ops/routes/{route}/resume", headers=ops,
                                    json={"reason": "test: routes are back"})
        assert r.status_code == 200, r.text
    async with stack.container.db.transaction() as conn:  # the deadline passed; no sweep yet
        await conn.execute(orders.update().where(orders.c.id == oid)
                           .values(expires_at=datetime.now(UTC) - timedelta(seconds=5)))
        row = (await conn.execute(sa.select(outbox).where(
            outbox.c.aggregate_id == oid, outbox.c.event_type == "order.captured"))).one()
    created = [await stack.calls(p) for p in ("midtrans", "xendit")]
    with contextlib.suppress(Exception):  # no route: the relay would retry it
        await stack.container.gateway_jobs.on_order_captured(OutboxEvent(
            id=row.id, event_id=row.event_id, event_type=row.event_type,
            aggregate_id=row.aggregate_id, merchant_id=row.merchant_id, payload=row.payload,
            attempts=1, created_at=row.created_at))
    switched = await stack.client.post(f"/v1/orders/{oid}/payment", headers=stack.shop.headers,
                                       json={"rail": "qris"})
    assert switched.status_code == 409, switched.text
    assert [await stack.calls(p) for p in ("midtrans", "xendit")] == created
    assert await order_state(stack, oid) == "captured"  # the expiry sweep's to close
    async with stack.container.db.read() as conn:
        told = (await conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.aggregate_id == oid,
            outbox.c.event_type == "order.awaiting_payment"))).scalar_one()
    assert told == 0
