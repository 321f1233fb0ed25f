"""Deferred verification under provider faults: every pending payment settles when its source of
truth recovers, at a pace the provider can take, and nothing expires unchecked.

Chaos-style: the real service and the real worker (relay, sweeps, verifier, feed poller) run
in-process against the simulators over real sockets, on PostgreSQL and Redis. Faults are injected
at the simulators; the clock is shifted to reach deadlines. Every test ends by checking the rules
of state (ARCHITECTURE.md §3) from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from chaos.sim.moota import MootaSim
from chaos.sim.runner import Simulators, start_simulators
from orchestrator.bootstrap import Container, build
from orchestrator.domain.verification import VerificationSchedule
from orchestrator.rails.breaker import BreakerState
from orchestrator.rails.guard import BreakerGuard
from orchestrator.services.order_view import wib
from orchestrator.settings import (
    FeedSettings,
    SchedulerSettings,
    Settings,
    VerificationSettings,
)
from orchestrator.store.tables import (
    evidence,
    merchants,
    orders,
    outbox,
    payment_attempts,
    review_cases,
)
from orchestrator.tls import default_trust
from orchestrator.worker import LiveSourceHealth, run_worker, sweep_once
from tests.integration.test_failover import gateway_settings
from tests.invariants import assert_rules_of_state
from tests.support import (
    ShiftedClock,
    ShopFixture,
    eventually,
    free_port,
    metric_value,
    new_merchant,
    new_ops_token,
    order_body,
    serve,
)

PAST_DEADLINE = timedelta(days=1, minutes=5)
STATUS_DOWN = {"kind": "error_rate", "operation": "status", "probability": 1.0, "status": 503}


@dataclass
class Shop:
    container: Container
    clock: ShiftedClock
    sims: Simulators
    client: httpx.AsyncClient
    merchant: ShopFixture
    moota: MootaSim | None
    stop: asyncio.Event
    workers: list[asyncio.Task[None]]

    def start_worker(self) -> None:
        self.workers.append(asyncio.create_task(run_worker(self.container, self.stop)))

    async def checkout(self, rail: str = "qris", channel: str | None = None) -> dict[str, Any]:
        body = order_body(f"DV-{uuid.uuid4().hex[:10]}", 125_000, rail=rail)
        if channel:
            body["channel"] = channel
        r = await self.client.post("/v1/orders", json=body, headers={
            **self.merchant.headers, "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def order(self, order_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/orders/{order_id}", headers=self.merchant.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def midtrans(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(verify=default_trust()) as c:
            r = await c.request(method, f"{self.sims.midtrans.control_url}{path}", json=body)
            assert r.status_code < 300, r.text
            return r.json() if r.content else None

    async def xendit(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(verify=default_trust()) as c:
            r = await c.request(method, f"{self.sims.xendit.control_url}{path}", json=body)
            assert r.status_code < 300, r.text
            return r.json() if r.content else None

    async def attempts(self, order_id: str) -> list[Any]:
        async with self.container.db.read() as conn:
            return list((await conn.execute(sa.select(payment_attempts).where(
                payment_attempts.c.order_id == order_id)
                .order_by(payment_attempts.c.created_at))).all())

    async def states(self, ids: list[str]) -> dict[str, str]:
        async with self.container.db.read() as conn:
            rows = (await conn.execute(sa.select(orders.c.id, orders.c.state).where(
                orders.c.id.in_(ids)))).all()
        return {r.id: r.state for r in rows}

    async def events(self, event_type: str, ids: list[str]) -> list[Any]:
        async with self.container.db.read() as conn:
            return list((await conn.execute(sa.select(outbox).where(
                outbox.c.event_type == event_type, outbox.c.aggregate_id.in_(ids)))).all())


@contextlib.asynccontextmanager
async def shop(container: Container, *, reads_per_minute: float = 6_000,
               with_feed: bool = False,
               feed_stale_after: timedelta = timedelta(minutes=20),
               claim: timedelta = timedelta(seconds=60),
               paces: dict[str, float] | None = None, batch: int = 200,
               concurrency: int = 16, worker_down: bool = False) -> AsyncIterator[Shop]:
    """``worker_down``: the api serves alone until the test calls ``start_worker``."""
    sims = await start_simulators()
    moota = None
    if with_feed:
        moota = MootaSim()
        await moota.start()
    port = free_port()
    base = gateway_settings(container.settings, sims)
    clock = ShiftedClock()
    settings: Settings = replace(
        base,
        http=replace(base.http, host="127.0.0.1", port=port, public_url=""),
        scheduler=SchedulerSettings(sweep_interval=timedelta(seconds=0.2),
                                    verification_window=timedelta(hours=2)),
        verification=VerificationSettings(
            schedule=VerificationSchedule(retry_after_failure=timedelta(seconds=0.3)),
            status_reads_per_minute=paces or {"midtrans": reads_per_minute,
                                              "xendit": reads_per_minute},
            interval=timedelta(seconds=0.1), claim=claim, batch=batch,
            concurrency=concurrency),
        feed=FeedSettings(moota_url=moota.data_url, moota_token=moota.token,
                          poll_interval=timedelta(seconds=0.3),
                          stale_after=feed_stale_after) if moota else FeedSettings(),
    )
    c = build(settings, clock=clock)
    await c.start()
    stop = asyncio.Event()
    workers = [] if worker_down else [asyncio.create_task(run_worker(c, stop))]
    merchant: ShopFixture | None = None
    try:
        merchant = await new_merchant(c)
        async with serve(c, port) as url, httpx.AsyncClient(verify=default_trust(),
                                                            base_url=url, timeout=30) as cl:
            s = Shop(c, clock, sims, cl, merchant, moota, stop, workers)
            await s.midtrans("POST", "/config", {"drop_notifications": True})
            await s.xendit("POST", "/config", {
                "callback_url": f"{url}/v1/webhooks/xendit",
                "callback_token": c.settings.providers.xendit_callback_token})
            yield s
    finally:
        stop.set()
        for worker in workers:
            await asyncio.wait_for(worker, timeout=15)
        if merchant is not None:
            await leave_nothing_due(c, merchant.merchant_id)
        await c.close()
        await sims.stop()
        if moota is not None:
            await moota.stop()


async def leave_nothing_due(c: Container, merchant_id: str) -> None:
    """The database outlives a shop; its simulators do not. Work a shop leaves behind (a watch
    read of an expired QR due an hour of its clock later, a deferred read, an open order) would
    become due when a later shop advances its own clock, be run by that shop's worker against
    that shop's simulators, and count in its request log and its pace. Nothing of this shop's
    stays due."""
    mine = sa.select(orders.c.id).where(orders.c.merchant_id == merchant_id)
    theirs = sa.select(payment_attempts.c.id).where(payment_attempts.c.order_id.in_(mine))
    async with c.db.transaction() as conn:
        await conn.execute(outbox.update().where(
            outbox.c.status == "pending",
            sa.or_(outbox.c.merchant_id == merchant_id, outbox.c.aggregate_id.in_(mine),
                   outbox.c.aggregate_id.in_(theirs))).values(status="done"))
        await conn.execute(payment_attempts.update().where(
            payment_attempts.c.order_id.in_(mine)).values(next_check_at=None, deferred_on=None))
        await conn.execute(orders.update().where(
            orders.c.merchant_id == merchant_id,
            orders.c.state.in_(["captured", "awaiting_payment", "verifying"]),
        ).values(expires_at=datetime(2999, 1, 1, tzinfo=UTC)))


async def pay_at_midtrans(s: Shop, order: dict[str, Any]) -> None:
    await s.midtrans("POST", "/pay", {"order_id": order["payment"]["attempt_id"]})


async def test_dropped_webhooks_and_status_down_all_window_settle_on_recovery(
    container: Container,
) -> None:
    async with shop(container) as s:
        placed = [await s.checkout() for _ in range(6)]
        assert {o["routing"]["served_by"] for o in placed} == {"qris:midtrans:qris"}
        ids = [o["id"] for o in placed]
        for o in placed[:5]:  # five customers pay; no webhook ever comes
            await pay_at_midtrans(s, o)
        await s.midtrans("POST", "/faults", STATUS_DOWN)

        s.clock.advance(PAST_DEADLINE)  # the payment window ends with the status API down

        async def all_deferred() -> bool:
            views = [await s.order(i) for i in ids]
            return all(v["status"] == "verifying"
                       and v["verification"]["state"] == "waiting_for_provider" for v in views)

        await eventually(all_deferred, 20, "every order verifying, waiting for the provider")
        view = await s.order(ids[0])
        assert view["verification"]["waiting_on"] == "qris:midtrans:qris"
        assert view["verification"]["next_check_at"] is not None
        assert view["verification"]["display"]["next_check_at"].endswith("WIB")
        pending = await s.events("order.payment_pending", ids)
        assert {e.aggregate_id for e in pending} == set(ids)  # each merchant told, once each
        assert len(pending) == len(ids)
        assert pending[0].payload["verification"]["reason"] == "provider_unavailable"
        for told in (e.payload["verification"] for e in pending):  # UTC, and WIB beside it
            assert told["display"] == {
                "next_check_at": wib(datetime.fromisoformat(told["next_check_at"]))}
        assert (await s.states(ids)) == dict.fromkeys(ids, "verifying")  # nothing expired blind
        scraped = (await s.client.get("/metrics")).content  # what an SRE's Prometheus sees
        route = "qris:midtrans:qris"
        # The database is shared with other tests: compare, never assume it holds only ours.
        parked = metric_value(scraped, "lunas_verification_deferred", route=route)
        assert parked >= 6
        assert metric_value(scraped, "lunas_verification_backlog", route=route) >= 6
        assert metric_value(scraped, "lunas_verification_oldest_age_seconds", route=route) > 0
        assert metric_value(scraped, "lunas_orders_verifying") >= 6

        await s.midtrans("DELETE", "/faults")  # the provider recovers

        async def settled() -> bool:
            return set((await s.states(ids)).values()) <= {"paid", "expired"}

        await eventually(settled, 30, "every order settled after recovery")
        states = await s.states(ids)
        assert [states[i] for i in ids] == ["paid"] * 5 + ["expired"]
        assert await assert_rules_of_state(s.container.db, ids) == {"paid": 5, "expired": 1}
        await s.container.state_sampler.refresh(force=True)
        seen = s.container.metrics.exposition()
        assert metric_value(seen, "lunas_verification_deferred",
                            route="qris:midtrans:qris") <= parked - 6
        reads = "lunas_verification_reads_total"
        assert metric_value(seen, reads, provider="midtrans", outcome="paid") == 5
        assert metric_value(seen, reads, provider="midtrans", outcome="deferred") >= 1
        assert metric_value(seen, "lunas_verification_released_total",
                            route="qris:midtrans:qris") >= 1


async def test_recovery_drains_the_backlog_at_the_configured_pace(container: Container) -> None:
    per_minute = 600.0  # Xendit's documented live limit: 10 a second
    async with shop(container, reads_per_minute=per_minute) as s:
        placed = [await s.checkout() for _ in range(30)]
        ids = [o["id"] for o in placed]
        # The customers pay at once: payments at the simulator touch no breaker or pace.
        await asyncio.gather(*(pay_at_midtrans(s, o) for o in placed))
        await s.midtrans("POST", "/faults", STATUS_DOWN)
        s.clock.advance(PAST_DEADLINE)

        async def backlog_deferred() -> bool:
            async with s.container.db.read() as conn:
                n = (await conn.execute(sa.select(sa.func.count()).where(
                    payment_attempts.c.order_id.in_(ids),
                    payment_attempts.c.deferred_on.is_not(None)))).scalar_one()
            return int(n) == len(ids)

        await eventually(backlog_deferred, 20, "the whole backlog deferred")
        recovered_at = time.time()
        await s.midtrans("DELETE", "/faults")

        async def all_paid() -> bool:
            return set((await s.states(ids)).values()) == {"paid"}

        await eventually(all_paid, 30, "the backlog paid")
        log = await s.midtrans("GET", f"/calls/log?operation=status&since={recovered_at}")
        # Every request after recovery counts against the limit, including a trial that left
        # just before the fault was cleared and failed; each order is read successfully once.
        times = sorted(r["at"] for r in log)
        async with s.container.db.read() as conn:
            reads = (await conn.execute(sa.select(payment_attempts.c.id,
                                                payment_attempts.c.last_check).where(
                payment_attempts.c.order_id.in_(ids)))).all()
        read_twice = [r.id for r in reads if r.last_check != "paid: settle"]
        assert sum(r["outcome"] == "ok" for r in log) == len(ids), read_twice
        peak = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
        rate = per_minute / 60
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
        assert peak <= rate, f"{peak} reads within one second (limit {rate:.0f}); gaps {gaps}"
        # Never faster than allowed: the reads span at least (n - 1) slots. How close to the
        # ideal the drain comes is measured by bench/recovery.py, not asserted here.
        assert times[-1] - times[0] >= (len(ids) - 1) / rate * 0.95
        await assert_rules_of_state(s.container.db, ids)


async def run_out_the_window(s: Shop, ids: list[str]) -> None:
    """The status API goes down at the deadline and stays down past the verification window."""
    await s.midtrans("POST", "/faults", STATUS_DOWN)
    s.clock.advance(PAST_DEADLINE)

    async def deferred() -> bool:
        views = [await s.order(i) for i in ids]
        return all(v["verification"]["state"] == "waiting_for_provider" for v in views)

    await eventually(deferred, 20, "orders waiting for the provider")
    s.clock.advance(timedelta(hours=3))  # past the 2 h verification window, still down

    async def reviewed() -> bool:
        return set((await s.states(ids)).values()) == {"needs_review"}

    await eventually(reviewed, 10, "orders in review")


async def test_window_runs_out_with_the_provider_still_down_goes_to_a_person(
    container: Container,
) -> None:
    async with shop(container) as s:
        placed = [await s.checkout() for _ in range(2)]
        ids = [o["id"] for o in placed]
        await pay_at_midtrans(s, placed[0])
        await run_out_the_window(s, ids)
        for i in ids:
            view = await s.order(i)
            assert view["review_reason"] == "verification_window_exhausted"
        review = await s.events("order.needs_review", ids)
        assert review[0].payload["waiting_on"] == ["qris:midtrans:qris"]
        assert await assert_rules_of_state(s.container.db, ids) == {"needs_review": 2}
        # What the person who picks up the case sees behind it: since when it waited, and the
        # read still deferred on the route that is down.
        ops = {"Authorization": f"Bearer {await new_ops_token(s.container)}"}
        record: dict[str, Any] = {}

        async def deferred_on_the_route() -> bool:
            # The breaker still tries the provider half-open each second: a released read is
            # due for the moment its trial takes, and parked again once it fails (CI, 2026-12-01).
            record.update((await s.client.get(f"/v1/ops/orders/{ids[1]}", headers=ops)).json())
            [qris] = record["attempts"]
            return bool(qris["verification"]["deferred_on"] == "qris:midtrans:qris")

        await eventually(deferred_on_the_route, 10, "the read deferred on the route down")
        since, deadline = (datetime.fromisoformat(record["order"][k])
                           for k in ("verifying_since", "expires_at"))
        assert since >= deadline
        assert [c["reason"] for c in record["review_cases"]] == ["verification_window_exhausted"]


async def cases_of(s: Shop, ids: list[str]) -> dict[str, Any]:
    async with s.container.db.read() as conn:
        return {c.order_id: c for c in await conn.execute(
            sa.select(review_cases).where(review_cases.c.order_id.in_(ids)))}


CAUGHT_UP_LATE = PAST_DEADLINE + timedelta(hours=3)
"""Past the deadline by more than the 2 h verification window when a sweep first sees it."""


async def first_sweep_after_restart(s: Shop) -> None:
    """The pass a worker back from its own outage runs first, before any status read of it:
    batch after batch while batches come full, as ``sweep_forever`` does. (The session's
    database holds earlier tests' orders, due too once the clock has jumped a day: one batch of
    them left this test's orders unswept, CI 2026-12-01.)"""
    c = s.container
    health = LiveSourceHealth(BreakerGuard(c.breakers), c.feed_poller)
    while await sweep_once(c, health):
        pass


async def test_a_worker_back_after_the_window_reads_the_orders_before_deciding_them(
    container: Container,
) -> None:
    """Regression (review): a worker down for longer than the verification window (or a clock
    that jumped) found orders past their deadline by more than the window; its first sweep put
    them in ``verifying`` and, in the same pass, in ``needs_review`` before anything had read
    them: each merchant heard ``order.needs_review`` "waiting on" a provider that was up, then
    ``order.paid`` or ``order.expired``, and a person got a case per order."""
    async with shop(container, worker_down=True) as s:
        placed = [await s.checkout() for _ in range(2)]
        ids = [o["id"] for o in placed]
        await pay_at_midtrans(s, placed[0])  # one customer paid; the webhook is lost
        s.clock.advance(CAUGHT_UP_LATE)
        await first_sweep_after_restart(s)
        assert await s.states(ids) == dict.fromkeys(ids, "verifying")  # to be read first
        s.start_worker()

        async def decided() -> bool:
            return set((await s.states(ids)).values()) <= {"paid", "expired"}

        await eventually(decided, 30, "both orders decided by their provider's answer")
        assert await s.states(ids) == {ids[0]: "paid", ids[1]: "expired"}
        assert await s.events("order.needs_review", ids) == []
        assert await cases_of(s, ids) == {}
        assert [e.aggregate_id for e in await s.events("order.paid", ids)] == [ids[0]]
        assert [e.aggregate_id for e in await s.events("order.expired", ids)] == [ids[1]]
        assert await assert_rules_of_state(s.container.db, ids) == {"paid": 1, "expired": 1}


async def test_a_worker_back_after_the_window_waits_for_the_feed_before_deciding_transfers(
    container: Container,
) -> None:
    """The same restart for manual transfers: no poll has read the feed past their deadline yet
    (the poller was down with the worker), so they wait for its first poll, not for a person."""
    async with shop(container, with_feed=True, worker_down=True) as s:
        assert s.moota is not None
        placed = [await s.checkout(rail="manual_transfer") for _ in range(2)]
        ids = [o["id"] for o in placed]
        paid = placed[0]["payment"]  # one customer transfers before the deadline
        async with httpx.AsyncClient(verify=default_trust()) as c:
            r = await c.post(f"{s.moota.control_url}/mutations", json={
                "account_number": paid["account_number"], "amount": paid["transfer_amount"],
                "type": "CR", "description": "TRSF E-BANKING CR ANDI"})
            assert r.status_code == 200, r.text
        s.clock.advance(CAUGHT_UP_LATE)
        await first_sweep_after_restart(s)
        assert await s.states(ids) == dict.fromkeys(ids, "verifying")
        s.start_worker()

        async def decided() -> bool:
            return set((await s.states(ids)).values()) <= {"paid", "expired"}

        await eventually(decided, 20, "the feed read and both orders decided")
        assert await s.states(ids) == {ids[0]: "paid", ids[1]: "expired"}
        assert await s.events("order.needs_review", ids) == []
        assert await cases_of(s, ids) == {}
        assert await assert_rules_of_state(s.container.db, ids) == {"paid": 1, "expired": 1}


async def test_a_worker_back_after_the_window_in_an_outage_gives_the_orders_a_whole_window(
    container: Container,
) -> None:
    """The same restart with the provider's status API down: the orders wait in ``verifying``
    the whole window, counted from when Lunas put them there (not from their deadline, which
    would leave them none), then go to a person, each merchant told once."""
    async with shop(container, worker_down=True) as s:
        placed = [await s.checkout() for _ in range(2)]
        ids = [o["id"] for o in placed]
        await pay_at_midtrans(s, placed[0])
        await s.midtrans("POST", "/faults", STATUS_DOWN)
        s.clock.advance(CAUGHT_UP_LATE)
        await first_sweep_after_restart(s)
        assert await s.states(ids) == dict.fromkeys(ids, "verifying")
        s.start_worker()

        async def deferred() -> bool:
            views = [await s.order(i) for i in ids]
            return all(v["verification"]["state"] == "waiting_for_provider" for v in views)

        await eventually(deferred, 20, "orders waiting for the provider")
        s.clock.advance(timedelta(hours=1, minutes=50))  # within 2 h of entering verifying
        await first_sweep_after_restart(s)
        assert await s.states(ids) == dict.fromkeys(ids, "verifying")
        assert await s.events("order.needs_review", ids) == []

        s.clock.advance(timedelta(minutes=15))  # the window is over, the provider still down

        async def reviewed() -> bool:
            return set((await s.states(ids)).values()) == {"needs_review"}

        await eventually(reviewed, 10, "orders in review")
        await first_sweep_after_restart(s)  # another pass tells nobody anything again
        for i in ids:
            assert (await s.order(i))["review_reason"] == "verification_window_exhausted"
        review = await s.events("order.needs_review", ids)
        assert sorted(e.aggregate_id for e in review) == sorted(ids)  # once each
        assert {tuple(e.payload["waiting_on"]) for e in review} == {("qris:midtrans:qris",)}
        opened = await s.events("review_case.opened", ids)
        assert sorted(e.aggregate_id for e in opened) == sorted(ids)
        pending = await s.events("order.payment_pending", ids)
        assert sorted(e.aggregate_id for e in pending) == sorted(ids)
        assert await assert_rules_of_state(s.container.db, ids) == {"needs_review": 2}


async def test_the_provider_back_after_the_window_answers_the_review_either_way(
    container: Container,
) -> None:
    """Regression (review): a payment proven after the window ran out opened a refund case the
    order could not leave review by, and nothing ever decided the unpaid ones."""
    async with shop(container) as s:
        placed = [await s.checkout() for _ in range(2)]
        ids = [o["id"] for o in placed]
        await pay_at_midtrans(s, placed[0])  # one customer paid; nobody can see it yet
        await run_out_the_window(s, ids)
        asked = await cases_of(s, ids)
        assert {i: (c.reason, c.recommended_action, c.state) for i, c in asked.items()} == \
            dict.fromkeys(ids, ("verification_window_exhausted", "check_at_source", "open"))
        told = await s.events("review_case.opened", ids)
        assert sorted(e.aggregate_id for e in told) == sorted(ids)

        await s.midtrans("DELETE", "/faults")  # the provider comes back

        async def decided() -> bool:
            return set((await s.states(ids)).values()) <= {"paid", "expired"}

        await eventually(decided, 30, "both orders decided by their sources")
        assert await s.states(ids) == {ids[0]: "paid", ids[1]: "expired"}
        answered = await cases_of(s, ids)
        assert {i: (c.state, c.resolution, c.resolved_by) for i, c in answered.items()} == {
            ids[0]: ("resolved", "payment_found", "lunas"),
            ids[1]: ("resolved", "no_payment_found", "lunas")}
        resolved = await s.events("review_case.resolved", ids)
        assert sorted(e.aggregate_id for e in resolved) == sorted(ids)
        assert [e.aggregate_id for e in await s.events("order.paid", ids)] == [ids[0]]
        assert [e.aggregate_id for e in await s.events("order.expired", ids)] == [ids[1]]
        assert len(await cases_of(s, ids)) == 2  # no refund case beside them
        assert await assert_rules_of_state(s.container.db, ids) == {"paid": 1, "expired": 1}


async def test_a_person_decides_an_order_whose_payment_could_not_be_verified(
    container: Container,
) -> None:
    """Expire, honour or refund on the source's word; when the source comes back, what it
    reports about the payment a person decided on is that payment: never a second one, and
    never a second refund (review finding)."""
    async with shop(container) as s:
        placed = [await s.checkout() for _ in range(3)]
        ids = unpaid, honoured, refunded = [o["id"] for o in placed]
        for o in placed[1:]:
            await pay_at_midtrans(s, o)  # paid before the deadline; nobody can see it yet
        await run_out_the_window(s, ids)
        ops = {"Authorization": f"Bearer {await new_ops_token(s.container)}"}
        asked = await cases_of(s, ids)

        async def resolve(order_id: str, action: str, note: str) -> httpx.Response:
            return await s.client.post(f"/v1/reviews/{asked[order_id].id}/resolve",
                                       headers=ops, json={"action": action, "note": note})

        for order_id, action in ((unpaid, "expire"), (honoured, "honour"),
                                 (refunded, "refund")):
            r = await resolve(order_id, action, f"Midtrans dashboard: {action}")
            assert (r.status_code, r.json()["resolution"]) == (200, action), r.text
        assert await s.states(ids) == {unpaid: "expired", honoured: "paid",
                                       refunded: "refunded"}
        # Their instruments are retired (cancelled where possible), still read and watched.
        attempts = [a for i in ids for a in await s.attempts(i)]
        assert {a.state for a in attempts} == {"superseded"}
        # One cancel asked for each (a cancel Midtrans cannot take now is asked again later).
        assert {e.aggregate_id for e in await s.events(
            "attempt.cancel_requested", [a.id for a in attempts])} == {a.id for a in attempts}

        await s.midtrans("DELETE", "/faults")  # the provider comes back and is read

        async def read_back() -> bool:
            # The unpaid one closes either way: expired when read first, failed when the cancel
            # Lunas asked for reached Midtrans before the read (both orders of the two jobs are
            # right, and a run could take either: the test used to expect only the first).
            closed = {"expired", "failed"}
            for i in ids:
                if not {a.state for a in await s.attempts(i)} <= (
                        closed if i == unpaid else {"paid"}):
                    return False
            return True

        await eventually(read_back, 30, "every instrument read after recovery")
        assert await s.states(ids) == {unpaid: "expired", honoured: "paid",
                                       refunded: "refunded"}
        async with s.container.db.read() as conn:
            verdicts = dict((await conn.execute(sa.select(evidence.c.order_id, evidence.c.verdict)
                                                .where(evidence.c.order_id.in_(ids)))).all())
            opened = (await conn.execute(sa.select(review_cases.c.order_id, review_cases.c.reason,
                                                   review_cases.c.recommended_action)
                                         .where(review_cases.c.order_id.in_(ids),
                                                review_cases.c.state == "open"))).all()
        assert verdicts == {honoured: "settle", refunded: "on_closed_order"}
        # The refunded payment, proven: a person matches it; no second refund is recommended.
        assert [tuple(c) for c in opened] == [
            (refunded, "payment_on_closed_order", "match_manually")]
        assert [e.aggregate_id for e in await s.events("order.paid", ids)] == [honoured]
        assert await assert_rules_of_state(s.container.db, ids) == {
            "paid": 1, "expired": 1, "refunded": 1}


async def test_a_transfer_a_person_honoured_unproven_is_not_a_second_payment_once_seen(
    container: Container,
) -> None:
    async with shop(container, with_feed=True) as s:
        assert s.moota is not None
        placed = await s.checkout(rail="manual_transfer")
        await asyncio.sleep(0.5)  # a first poll succeeds: the feed is fresh
        async with httpx.AsyncClient(verify=default_trust()) as c:
            r = await c.post(f"{s.moota.control_url}/faults", json={"kind": "down"})
            assert r.status_code == 200, r.text
            paid = placed["payment"]
            r = await c.post(f"{s.moota.control_url}/mutations", json={
                "account_number": paid["account_number"], "amount": paid["transfer_amount"],
                "type": "CR", "description": "TRSF E-BANKING CR SITI"})
            assert r.status_code == 200, r.text
        s.clock.advance(PAST_DEADLINE)
        await eventually(lambda: _state_is(s, placed["id"], "verifying"), 10, "held")
        s.clock.advance(timedelta(hours=3))  # the feed stays down past the window
        await eventually(lambda: _state_is(s, placed["id"], "needs_review"), 10, "in review")
        # The customer shows the bank app's receipt; finance honours the order.
        case = (await cases_of(s, [placed["id"]]))[placed["id"]]
        ops = {"Authorization": f"Bearer {await new_ops_token(s.container)}"}
        r = await s.client.post(f"/v1/reviews/{case.id}/resolve", headers=ops, json={
            "action": "honour", "note": "receipt BCA 10:02 WIB, 125,xxx rupiah"})
        assert r.status_code == 200, r.text

        async with httpx.AsyncClient(verify=default_trust()) as c:
            await c.delete(f"{s.moota.control_url}/faults")  # the feed brings the transfer

        async def seen() -> bool:
            async with s.container.db.read() as conn:
                return bool((await conn.execute(sa.select(sa.func.count()).select_from(
                    evidence).where(evidence.c.order_id == placed["id"]))).scalar_one())

        await eventually(seen, 20, "the honoured transfer read from the feed")
        async with s.container.db.read() as conn:
            verdicts = (await conn.execute(sa.select(evidence.c.verdict).where(
                evidence.c.order_id == placed["id"]))).scalars().all()
        assert verdicts == ["settle"]  # the payment honoured, now proven: not a second one
        assert list(await cases_of(s, [placed["id"]])) == [placed["id"]]  # no refund case
        assert [a.state for a in await s.attempts(placed["id"])] == ["paid"]
        assert len(await s.events("order.paid", [placed["id"]])) == 1
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"paid": 1}


async def _state_is(s: Shop, order_id: str, state: str) -> bool:
    return (await s.states([order_id]))[order_id] == state


async def test_a_stale_mutation_feed_holds_expiry_until_it_catches_up(
    container: Container,
) -> None:
    async with shop(container, with_feed=True) as s:
        assert s.moota is not None
        placed = [await s.checkout(rail="manual_transfer") for _ in range(2)]
        ids = [o["id"] for o in placed]
        await asyncio.sleep(0.5)  # a first poll succeeds: the feed is fresh
        async with httpx.AsyncClient(verify=default_trust()) as c:
            r = await c.post(f"{s.moota.control_url}/faults", json={"kind": "down"})
            assert r.status_code == 200, r.text
        # The customer transfers before the deadline, but the feed is down and cannot tell us.
        paid = placed[0]["payment"]
        async with httpx.AsyncClient(verify=default_trust()) as c:
            r = await c.post(f"{s.moota.control_url}/mutations", json={
                "account_number": paid["account_number"], "amount": paid["transfer_amount"],
                "type": "CR", "description": "TRSF E-BANKING CR ANDI"})
            assert r.status_code == 200, r.text
        s.clock.advance(PAST_DEADLINE)  # the last poll is now older than stale_after

        async def held() -> bool:
            return (await s.states(ids)) == dict.fromkeys(ids, "verifying")

        await eventually(held, 10, "both orders held in verifying")
        pending = await s.events("order.payment_pending", ids)
        assert {e.payload["verification"]["reason"] for e in pending} == {"bank_feed_stale"}
        assert (await s.order(ids[0]))["verification"]["state"] == "watching_bank_mutations"

        async with httpx.AsyncClient(verify=default_trust()) as c:
            await c.delete(f"{s.moota.control_url}/faults")

        async def decided() -> bool:
            return set((await s.states(ids)).values()) <= {"paid", "expired"}

        await eventually(decided, 20, "the feed caught up and both orders decided")
        assert await s.states(ids) == {ids[0]: "paid", ids[1]: "expired"}
        assert await assert_rules_of_state(s.container.db, ids) == {"paid": 1, "expired": 1}


async def test_timeout_after_success_then_payment_on_the_orphan_settles_the_order(
    container: Container,
) -> None:
    async with shop(container) as s:
        # Midtrans creates the QR but the answer never comes, and its status API is down: the
        # attempt is unknown, checkout fails over to Xendit, and the orphan cannot be checked.
        await s.midtrans("POST", "/faults", {"kind": "timeout_after_success",
                                              "operation": "create", "channel": "qris"})
        await s.midtrans("POST", "/faults", STATUS_DOWN)
        placed = await s.checkout()
        assert placed["routing"]["served_by"] == "qris:xendit:qris"
        orphan = next(a for a in await s.attempts(placed["id"]) if a.provider == "midtrans")
        assert orphan.state == "unknown"
        # The customer pays the QR they saw first: the orphan at Midtrans (no webhook comes).
        await s.midtrans("POST", "/pay", {"order_id": orphan.id})
        await s.midtrans("DELETE", "/faults")
        s.clock.advance(timedelta(minutes=3))  # the orphan's next scheduled check comes due

        async def paid() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "paid"

        await eventually(paid, 20, "the order paid through its orphaned instrument")
        by_provider = {a.provider: a.state for a in await s.attempts(placed["id"])}
        assert by_provider["midtrans"] == "paid"
        assert by_provider["xendit"] != "active"  # the other instrument is retired
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"paid": 1}


async def test_a_lost_ovo_create_is_never_made_again_and_its_payment_settles_once(
    container: Container,
) -> None:
    """Xendit documents no idempotency key on ``POST /ewallets/charges`` (RAILS.md §2.1) and no
    lookup of a charge by our reference (§2.4: by id only), so a create repeated to learn what
    a lost one did is a second charge: a second OVO push on the customer's phone, which they may
    approve as well. The simulator behaves as documented (it ignores the key there)."""
    async with shop(container, worker_down=True) as s:
        # Xendit makes the charge and pushes it to the customer's OVO; its answer never comes.
        # OVO is Xendit's alone: checkout fails over to QRIS at Midtrans.
        await s.xendit("POST", "/faults", {"kind": "timeout_after_success",
                                            "operation": "create", "channel": "ovo"})
        placed = await s.checkout("ewallet", "ovo")
        assert placed["routing"]["served_by"] == "qris:midtrans:qris"
        [orphan] = [a for a in await s.attempts(placed["id"]) if a.channel == "ovo"]
        assert orphan.state == "unknown"
        await s.xendit("DELETE", "/faults")
        s.start_worker()  # resolves the unknown create, with Xendit answering again

        async def resolved() -> bool:
            [now] = [a for a in await s.attempts(placed["id"]) if a.id == orphan.id]
            return bool(now.state not in ("unknown", "creating"))

        await eventually(resolved, 20, "the unknown OVO create resolved")
        [after] = [a for a in await s.attempts(placed["id"]) if a.id == orphan.id]
        assert after.state == "superseded"  # may be live on the customer's phone: watched
        found = await s.xendit("GET", f"/resources?reference={orphan.id}")
        assert len(found["ewallet_charges"]) == 1, found["ewallet_charges"]
        creates = [c for c in await s.xendit("GET", "/calls")
                   if (c["channel"], c["operation"]) == ("ovo", "create")]
        assert sum(c["count"] for c in creates) == 1, creates  # one push, never a second
        # The customer approves the one push they got: the order is paid by it, once.
        [charge] = found["ewallet_charges"]
        await s.xendit("POST", "/pay", {"kind": "ewallet", "id": charge["id"],
                                         "amount": charge["charge_amount"]})

        async def paid() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "paid"

        await eventually(paid, 20, "the order paid through the OVO push")
        by_channel = {a.channel: a.state for a in await s.attempts(placed["id"])}
        assert by_channel["ovo"] == "paid"
        assert by_channel["qris"] != "active"  # the QR shown instead is retired
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"paid": 1}


async def test_a_lost_ovo_create_paid_after_expiry_without_its_webhook_reaches_a_person(
    container: Container,
) -> None:
    """The charge of a lost OVO create cannot be cancelled (Xendit voids by id only, and its id
    never came back): the customer can still approve its push after the order expired. Its
    webhook lost, only the watch of the expired attempt finds the payment (rule 4)."""
    async with shop(container, worker_down=True) as s:
        await s.xendit("POST", "/faults", {"kind": "timeout_after_success",
                                            "operation": "create", "channel": "ovo"})
        placed = await s.checkout("ewallet", "ovo")
        [orphan] = [a for a in await s.attempts(placed["id"]) if a.channel == "ovo"]
        await s.xendit("DELETE", "/faults")
        await s.xendit("POST", "/config", {"callback_url": "http://127.0.0.1:9/lost"})
        s.start_worker()

        async def resolved() -> bool:
            [now] = [a for a in await s.attempts(placed["id"]) if a.id == orphan.id]
            return bool(now.state not in ("unknown", "creating"))

        await eventually(resolved, 20, "the unknown OVO create resolved")
        s.clock.advance(PAST_DEADLINE)  # unpaid at the deadline: read, then expired

        async def expired() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "expired"

        await eventually(expired, 20, "the unpaid order expired after its status reads")
        # The customer approves the first push late; Lunas never hears of it by webhook.
        first = (await s.xendit("GET", f"/resources?reference={orphan.id}"))["ewallet_charges"][0]
        await s.xendit("POST", "/pay", {"kind": "ewallet", "id": first["id"],
                                         "amount": first["charge_amount"]})
        s.clock.advance(timedelta(minutes=5))  # the watch's next read comes due

        async def reviewed() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "needs_review"

        await eventually(reviewed, 20, "the late OVO payment found and sent to a person")
        assert (await s.order(placed["id"]))["review_reason"] == "payment_after_expiry"
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {
            "needs_review": 1}


async def no_fallback(s: Shop, **routing: Any) -> None:
    """This shop's merchant allows no fallback to another rail (its own merchant: no other
    test shares it)."""
    async with s.container.db.transaction() as conn:
        await conn.execute(merchants.update().where(merchants.c.id == s.merchant.merchant_id)
                           .values(allow_fallback=False, routing=routing or None))


async def captured_after_a_lost_ovo_create(s: Shop) -> tuple[dict[str, Any], Any]:
    """An OVO checkout of a merchant who allows no fallback: Xendit makes the charge and pushes
    it to the customer's phone, its answer never comes, and nothing else may serve; the order
    is answered 202 ``captured``. Deferred issuance is made due at once (as after its wait)."""
    await no_fallback(s)
    await s.xendit("POST", "/faults", {"kind": "timeout_after_success",
                                        "operation": "create", "channel": "ovo"})
    r = await s.client.post("/v1/orders", json={
        **order_body(f"DV-{uuid.uuid4().hex[:10]}", 125_000, rail="ewallet"),
        "channel": "ovo"}, headers={**s.merchant.headers, "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 202, r.text
    placed = dict(r.json())
    assert placed["status"] == "captured"
    [orphan] = await s.attempts(placed["id"])
    assert (orphan.channel, orphan.state) == ("ovo", "unknown")
    await s.xendit("DELETE", "/faults")
    async with s.container.db.transaction() as conn:
        await conn.execute(outbox.update().where(
            outbox.c.aggregate_id == placed["id"], outbox.c.event_type == "order.captured",
        ).values(available_at=datetime.now(UTC) - timedelta(seconds=1)))
    return placed, orphan


async def ewallet_creates(s: Shop) -> int:
    """E-wallet charges asked of either provider, whatever came of them."""
    made = 0
    for provider in (s.xendit, s.midtrans):
        made += sum(c["count"] for c in await provider("GET", "/calls")
                    if c["operation"] == "create"
                    and c["channel"] in ("ovo", "dana", "linkaja", "shopeepay", "gopay"))
    return made


async def deferred_issuance_ran(s: Shop, order_id: str) -> None:
    async def ran() -> bool:
        [event] = await s.events("order.captured", [order_id])
        return bool((event.attempts >= 1 and event.status != "pending")
                    or event.attempts >= 2)

    await eventually(ran, 20, "deferred issuance run for the order")


async def test_a_lost_ovo_create_with_no_fallback_is_never_charged_again_by_deferred_issuance(
    container: Container,
) -> None:
    """Nothing else may serve the order, so it stays ``captured``, and deferred issuance
    (``order.captured``) used to issue it again: a second OVO charge, a second push the
    customer may approve as well as the first. The lost charge is read first (by reference:
    unpaid it cannot be told from absent, and cannot be voided without its id), and while it
    may still be approved the order waits on it, saying so, and is never charged again."""
    async with shop(container, worker_down=True) as s:
        placed, orphan = await captured_after_a_lost_ovo_create(s)
        s.start_worker()
        await deferred_issuance_ran(s, placed["id"])

        async def resolved() -> bool:
            [now] = [a for a in await s.attempts(placed["id"]) if a.id == orphan.id]
            return bool(now.state not in ("unknown", "creating"))

        await eventually(resolved, 20, "the unknown OVO create read")
        assert await ewallet_creates(s) == 1  # one push, never a second
        assert [a.id for a in await s.attempts(placed["id"])] == [orphan.id]
        view = await s.order(placed["id"])
        assert view["status"] == "captured"
        # What the order waits on, for the merchant's support and ops to read.
        assert view["payment"]["attempt_id"] == orphan.id
        assert view["verification"]["state"] == "unconfirmed_charge"
        assert view["verification"]["waiting_on"] == "ewallet:xendit:ovo"
        # The customer approves the one push they got: the order is paid by it, once.
        [charge] = (await s.xendit("GET", f"/resources?reference={orphan.id}"))[
            "ewallet_charges"]
        await s.xendit("POST", "/pay", {"kind": "ewallet", "id": charge["id"],
                                         "amount": charge["charge_amount"]})

        async def paid() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "paid"

        await eventually(paid, 20, "the order paid through the OVO push")
        assert await ewallet_creates(s) == 1
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"paid": 1}


async def test_a_lost_ovo_charge_approved_before_deferred_issuance_pays_the_order_once(
    container: Container,
) -> None:
    """The customer approved the push before the worker came; its webhook is lost. Deferred
    issuance reads the unknown charge first, finds it paid, and the order carries it: paid by
    it, nothing else created (before, it could issue a second charge beside the paid one)."""
    async with shop(container, worker_down=True) as s:
        placed, orphan = await captured_after_a_lost_ovo_create(s)
        await s.xendit("POST", "/config", {"callback_url": "http://127.0.0.1:9/lost"})
        [charge] = (await s.xendit("GET", f"/resources?reference={orphan.id}"))[
            "ewallet_charges"]
        await s.xendit("POST", "/pay", {"kind": "ewallet", "id": charge["id"],
                                         "amount": charge["charge_amount"]})
        s.start_worker()
        await deferred_issuance_ran(s, placed["id"])

        async def paid() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "paid"

        await eventually(paid, 20, "the order paid by the charge it already had")
        assert await ewallet_creates(s) == 1
        assert [(a.id, a.state) for a in await s.attempts(placed["id"])] == [(orphan.id, "paid")]
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"paid": 1}


async def test_a_customer_switch_never_makes_a_second_e_wallet_charge_beside_a_lost_one(
    container: Container,
) -> None:
    """The customer's switch to another e-wallet (or the same) while a lost OVO charge may
    still be approved would be a second charge: refused, saying why. A switch to another rail
    is the customer's explicit choice, and is served."""
    async with shop(container, worker_down=True) as s:
        placed, orphan = await captured_after_a_lost_ovo_create(s)
        s.start_worker()
        await deferred_issuance_ran(s, placed["id"])
        for channel in ("ovo", "dana"):
            r = await s.client.post(f"/v1/orders/{placed['id']}/payment",
                                    headers=s.merchant.headers,
                                    json={"rail": "ewallet", "channel": channel})
            assert r.status_code == 409, r.text
            assert r.json()["code"] == "ewallet_charge_unconfirmed", r.text
            assert orphan.id in r.json()["detail"]
        assert await ewallet_creates(s) == 1
        r = await s.client.post(f"/v1/orders/{placed['id']}/payment", headers=s.merchant.headers,
                                json={"rail": "qris"})
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "awaiting_payment"
        assert r.json()["payment"]["rail"] == "qris"
        assert await ewallet_creates(s) == 1
        assert await assert_rules_of_state(s.container.db, [placed["id"]], settled=False) == {
            "awaiting_payment": 1}


async def test_an_unanswered_e_wallet_create_is_not_followed_by_another_e_wallet_route(
    container: Container,
) -> None:
    """Within one capture: Xendit's ShopeePay create goes unanswered, and the next route in the
    merchant's plan was Midtrans' ShopeePay, a second e-wallet charge for the order while the
    first may be paid. The plan goes on to another rail (the merchant allows fallback)."""
    async with shop(container) as s:
        async with s.container.db.transaction() as conn:
            await conn.execute(merchants.update().where(
                merchants.c.id == s.merchant.merchant_id,
            ).values(routing={"priorities": {"ewallet": ["xendit", "midtrans"]}}))
        await s.xendit("POST", "/faults", {"kind": "timeout_after_success",
                                            "operation": "create", "channel": "shopeepay"})
        try:
            placed = await s.checkout("ewallet", "shopeepay")
        finally:
            await s.xendit("DELETE", "/faults")
        tried = [(h["route"], h["outcome"]) for h in placed["routing"]["tried"]]
        assert tried[0] == ("ewallet:xendit:shopeepay", "unknown"), tried
        assert tried[1][0] == "ewallet:midtrans:shopeepay" and tried[1][1] == "skipped", tried
        assert placed["routing"]["served_by"] == "qris:midtrans:qris"
        assert await ewallet_creates(s) == 1


async def test_payment_after_expiry_on_an_uncancellable_qr_goes_to_review(
    container: Container,
) -> None:
    async with shop(container) as s:
        await s.midtrans("POST", "/faults", {"kind": "down"})  # QRIS served by Xendit
        placed = await s.checkout()
        assert placed["routing"]["served_by"] == "qris:xendit:qris"
        attempt = (await s.attempts(placed["id"]))[-1]
        s.clock.advance(PAST_DEADLINE)  # unpaid at the deadline: read, then expired

        async def expired() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "expired"

        await eventually(expired, 20, "the unpaid order expired after its status read")
        # A Xendit QR cannot be cancelled: the customer still pays it, late.
        await s.xendit("POST", "/pay", {"kind": "qr", "external_id": attempt.id,
                                        "amount": attempt.transfer_amount, "force": True})

        async def reviewed() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "needs_review"

        await eventually(reviewed, 20, "the late payment sent to a person")
        view = await s.order(placed["id"])
        assert view["review_reason"] == "payment_after_expiry"
        ops = {"Authorization": f"Bearer {await new_ops_token(s.container)}"}
        [case] = (await s.client.get("/v1/reviews", headers=ops,
                                     params={"order_id": placed["id"]})).json()["data"]
        assert case["reason"] == "payment_after_expiry" and case["recommended_action"]
        sent = await s.events("order.needs_review", [placed["id"]])
        assert len(sent) == 1
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {
            "needs_review": 1}


async def test_a_payment_at_the_deadline_that_makes_the_cancel_fail_is_still_found(
    container: Container,
) -> None:
    """Regression (review): the read at the deadline says pending, the customer pays a moment
    later, and Midtrans refuses the cancel that follows (the charge is settled: 412); its
    notification is lost. The attempt was expired and the verifier reads closed attempts no
    more: the money was never seen. An expired instrument the provider would not cancel is read
    again at once, and watched through the code quarantine of its closing (rule 4)."""
    async with shop(container) as s:
        placed = await s.checkout()
        await s.midtrans("POST", "/faults", {"kind": "error_rate", "operation": "cancel",
                                              "probability": 1.0, "status": 503})
        s.clock.advance(PAST_DEADLINE)  # unpaid at the deadline: read, then expired

        async def expired() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "expired"

        await eventually(expired, 20, "the unpaid order expired after its status read")
        await pay_at_midtrans(s, placed)  # before the cancel goes through; nobody is told
        await s.midtrans("DELETE", "/faults")
        s.clock.advance(timedelta(minutes=1))  # the cancel is tried again, and refused

        async def reviewed() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "needs_review"

        await eventually(reviewed, 20, "the payment found and sent to a person")
        assert (await s.order(placed["id"]))["review_reason"] == "payment_after_expiry"
        assert [a.state for a in await s.attempts(placed["id"])] == ["paid"]
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {
            "needs_review": 1}


async def test_a_va_paid_before_its_cancel_went_through_is_still_found(
    container: Container,
) -> None:
    """Regression (review): the read at the deadline says pending, the customer pays the VA a
    moment later, and the cancel that follows succeeds anyway (Xendit closes a VA by moving
    its expiry; a paid one accepts that too); its callback is lost. The attempt was expired and
    nobody read it again. An expired instrument is read once more after its cancel."""
    async with shop(container) as s:
        await s.midtrans("POST", "/faults", {"kind": "down"})  # the VA is Xendit's
        placed = await s.checkout(rail="va", channel="bca")
        assert placed["routing"]["served_by"] == "va:xendit:bca"
        attempt = (await s.attempts(placed["id"]))[-1]
        await s.xendit("POST", "/config", {"callback_url": "http://127.0.0.1:9/lost"})
        await s.xendit("POST", "/faults", {"kind": "error_rate", "operation": "cancel",
                                           "probability": 1.0, "status": 503})
        s.clock.advance(PAST_DEADLINE)  # unpaid at the deadline: read, then expired

        async def expired() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "expired"

        await eventually(expired, 20, "the unpaid order expired after its status read")
        await s.xendit("POST", "/pay", {"kind": "va", "external_id": attempt.id,
                                        "amount": attempt.transfer_amount})
        await s.xendit("DELETE", "/faults")
        s.clock.advance(timedelta(minutes=1))  # the cancel is tried again, and goes through

        async def reviewed() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "needs_review"

        await eventually(reviewed, 20, "the payment found and sent to a person")
        assert (await s.order(placed["id"]))["review_reason"] == "payment_after_expiry"
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {
            "needs_review": 1}


LOST_CALLBACKS = {"drop_callbacks": True}
TRANSACTIONS_LAG = {"transactions_lag_s": 3600}
"""Xendit's Transactions API an hour behind the payments: the simulator turns a paid VA or QR
INACTIVE at once, and lists its payment only when the lag is set back to 0."""


async def read_after(s: Shop, attempt_id: str, order_id: str, since: datetime) -> Any:
    """The attempt once the verifier has read it at or after ``since`` (by Lunas's clock), or
    once it left the live states."""
    async def read() -> bool:
        a = next(a for a in await s.attempts(order_id) if a.id == attempt_id)
        return a.state != "active" or (
            a.last_checked_at is not None and a.last_checked_at >= since
            and (a.last_check or "").startswith("unreadable answer"))

    await eventually(read, 20, "the attempt read")
    return next(a for a in await s.attempts(order_id) if a.id == attempt_id)


async def test_a_paid_va_the_transactions_api_lists_late_is_not_expired_but_paid(
    container: Container,
) -> None:
    """Regression (review): a single-use VA turns INACTIVE the moment it is paid, and Xendit's
    Transactions API may list the payment minutes later. With the callback lost, the
    verifier's read in between found INACTIVE and no payment, and expired the attempt: the
    merchant heard the payment failed, the order expired at its deadline unread, and nothing
    read the VA again, so the payment was never applied (rule 4). An INACTIVE VA before its
    expiry that Lunas did not close is read again until the list catches up."""
    async with shop(container) as s:
        await s.midtrans("POST", "/faults", {"kind": "down"})  # the VA is Xendit's
        placed = await s.checkout(rail="va", channel="bca")
        assert placed["routing"]["served_by"] == "va:xendit:bca"
        attempt = (await s.attempts(placed["id"]))[-1]
        await s.xendit("POST", "/config", {**LOST_CALLBACKS, **TRANSACTIONS_LAG})
        await s.xendit("POST", "/pay", {"kind": "va", "external_id": attempt.id,
                                        "amount": attempt.transfer_amount})
        since = s.clock.now()
        s.clock.advance(timedelta(hours=1, minutes=5))  # the VA's first read, hours before expiry

        read = await read_after(s, attempt.id, placed["id"], since)
        assert read.state == "active", read.last_check
        assert "INACTIVE" in (read.last_check or "")
        assert (await s.states([placed["id"]]))[placed["id"]] == "awaiting_payment"
        assert await s.events("order.payment_failed", [placed["id"]]) == []

        await s.xendit("POST", "/config", {"transactions_lag_s": 0})  # the list catches up
        s.clock.advance(timedelta(minutes=31))  # past the longest gap between unreadable reads

        async def paid() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "paid"

        await eventually(paid, 20, "the payment found and applied")
        assert [a.state for a in await s.attempts(placed["id"])] == ["paid"]
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"paid": 1}


async def test_a_paid_qr_the_transactions_api_never_lists_goes_to_a_person_not_expired(
    container: Container,
) -> None:
    """A QR v1 cannot be closed by Lunas and has no expiry of its own: INACTIVE before the
    deadline is its payment. Read past the deadline with the Transactions API still silent,
    it was expired (and the order with it, its callback lost). It stays unread instead: the
    order waits in ``verifying``, goes to a person when the verification window runs out, and
    is paid when the list catches up."""
    async with shop(container) as s:
        await s.midtrans("POST", "/faults", {"kind": "down"})  # QRIS served by Xendit
        placed = await s.checkout()
        assert placed["routing"]["served_by"] == "qris:xendit:qris"
        attempt = (await s.attempts(placed["id"]))[-1]
        await s.xendit("POST", "/config", {**LOST_CALLBACKS, **TRANSACTIONS_LAG})
        await s.xendit("POST", "/pay", {"kind": "qr", "external_id": attempt.id,
                                        "amount": attempt.transfer_amount})
        s.clock.advance(PAST_DEADLINE)  # the read at the deadline finds INACTIVE, no payment

        read = await read_after(s, attempt.id, placed["id"], attempt.expires_at)
        assert read.state == "active", read.last_check
        assert "INACTIVE" in (read.last_check or "")

        async def verifying() -> bool:  # the expiry sweep runs apart from the read
            return (await s.states([placed["id"]]))[placed["id"]] == "verifying"

        await eventually(verifying, 20, "the order waiting on its read")
        assert [a.state for a in await s.attempts(placed["id"])
                if a.id == attempt.id] == ["active"]

        s.clock.advance(timedelta(hours=3))  # the verification window runs out, still unlisted

        async def reviewed() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "needs_review"

        await eventually(reviewed, 20, "the order sent to a person")
        view = await s.order(placed["id"])
        assert view["review_reason"] == "verification_window_exhausted"
        assert await s.events("order.expired", [placed["id"]]) == []

        await s.xendit("POST", "/config", {"transactions_lag_s": 0})  # the list catches up
        s.clock.advance(timedelta(minutes=31))  # past the longest gap between unreadable reads

        async def paid() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "paid"

        await eventually(paid, 20, "the payment found and applied")
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"paid": 1}


async def test_an_uncancellable_qr_is_watched_until_its_quarantine_ends_and_no_longer(
    container: Container,
) -> None:
    """The watch of an expired instrument nobody could cancel ends with the code quarantine
    of its closing: one last read at its end, and none after."""
    async with shop(container) as s:
        await s.midtrans("POST", "/faults", {"kind": "down"})
        placed = await s.checkout()
        attempt = (await s.attempts(placed["id"]))[-1]
        s.clock.advance(PAST_DEADLINE)

        async def watched() -> bool:
            a = next(a for a in await s.attempts(placed["id"]) if a.id == attempt.id)
            return a.state == "expired" and (a.last_check or "").startswith(
                "status read queued: watching an instrument the provider would not cancel")

        await eventually(watched, 20, "the expired QR read once more, then watched")
        s.clock.advance(s.container.settings.unique_codes.quarantine + timedelta(minutes=1))

        async def watch_over() -> bool:
            async with s.container.db.read() as conn:
                queued = (await conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
                    outbox.c.event_type == "attempt.verify", outbox.c.aggregate_id == attempt.id,
                    outbox.c.status == "pending"))).scalar_one()
            a = next(a for a in await s.attempts(placed["id"]) if a.id == attempt.id)
            return queued == 0 and a.last_check == "watch read: ACTIVE"

        await eventually(watch_over, 20, "the last read of the watch made, none queued")
        reads = await s.xendit("GET", "/calls/log?operation=status")
        s.clock.advance(timedelta(hours=1))
        await asyncio.sleep(1)
        assert await s.xendit("GET", "/calls/log?operation=status") == reads
        assert (await s.states([placed["id"]]))[placed["id"]] == "expired"


async def test_double_payment_across_two_rails_keeps_the_order_paid_and_opens_a_case(
    container: Container,
) -> None:
    async with shop(container) as s:
        await s.midtrans("POST", "/faults", {"kind": "down"})  # everything served by Xendit
        placed = await s.checkout()
        qr = (await s.attempts(placed["id"]))[-1]
        r = await s.client.post(f"/v1/orders/{placed['id']}/payment",
                                json={"rail": "va", "channel": "bca"},
                                headers=s.merchant.headers)
        assert r.status_code == 201, r.text
        va = next(a for a in await s.attempts(placed["id"]) if a.rail == "va")
        # The customer pays the VA, and the old QR they had already opened (it cannot be
        # cancelled at Xendit, so it stayed superseded and watched).
        await s.xendit("POST", "/pay", {"kind": "va", "external_id": va.id,
                                        "amount": va.transfer_amount})
        await s.xendit("POST", "/pay", {"kind": "qr", "external_id": qr.id,
                                        "amount": qr.transfer_amount, "force": True})

        async def case_opened() -> bool:
            async with s.container.db.read() as conn:
                n = (await conn.execute(sa.select(sa.func.count()).select_from(review_cases)
                                        .where(review_cases.c.order_id == placed["id"]))
                     ).scalar_one()
            return int(n) == 1

        await eventually(case_opened, 20, "a review case for the second payment")
        assert (await s.states([placed["id"]]))[placed["id"]] == "paid"
        async with s.container.db.read() as conn:
            case = (await conn.execute(sa.select(review_cases).where(
                review_cases.c.order_id == placed["id"]))).one()
        assert (case.reason, case.recommended_action) == ("second_payment", "refund")
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"paid": 1}


async def test_only_closed_attempts_lose_their_schedule(container: Container) -> None:
    """Regression (found by bench/recovery.py): the sweep that clears the schedule of finished
    attempts once also cleared attempts still ``creating`` mid-capture, which were then never
    read."""
    async with shop(container) as s:
        placed = await s.checkout()
        attempt = (await s.attempts(placed["id"]))[-1]
        assert attempt.next_check_at is not None
        due = attempt.next_check_at
        for state, kept in [("creating", True), ("active", True), ("superseded", True),
                            ("unknown", True), ("paid", False)]:
            async with s.container.db.transaction() as conn:
                await conn.execute(payment_attempts.update().where(
                    payment_attempts.c.id == attempt.id).values(state=state, next_check_at=due))
            await s.container.verifier.forget_closed()
            after = next(a for a in await s.attempts(placed["id"]) if a.id == attempt.id)
            assert (after.next_check_at is not None) is kept, state


async def test_webhook_storm_duplicates_out_of_order_and_forgeries_settle_exactly_once(
    container: Container,
) -> None:
    from tests.integration.test_provider_webhooks import midtrans_body

    async with shop(container) as s:
        key = s.container.settings.providers.midtrans_server_key
        placed = [await s.checkout() for _ in range(4)]
        ids = [o["id"] for o in placed]
        attempts = [(await s.attempts(i))[-1] for i in ids]
        storm: list[dict[str, Any]] = []
        for attempt in attempts[:2]:  # two customers pay; their genuine notification ...
            paid = await s.midtrans("POST", "/pay", {"order_id": attempt.id})
            settlement = {**paid, "status_message": "midtrans payment notification"}
            storm += [settlement] * 3  # ... arrives three times,
            storm += [midtrans_body(attempt, status=st, code=code, key=key,  # then stale ones
                                    txid=paid["transaction_id"])
                      for st, code in (("pending", "201"), ("expire", "407"))]
        for attempt in attempts[2:]:  # the two who did not pay get forged settlements
            storm.append(midtrans_body(attempt, status="settlement", code="200",
                                       txid=str(uuid.uuid4()), key="guessed-key"))
        random.Random(4).shuffle(storm)
        answers = await asyncio.gather(*(s.client.post("/v1/webhooks/midtrans",
                                                       content=json.dumps(body))
                                         for body in storm))
        assert sorted(r.status_code for r in answers) == [200] * 10 + [401] * 2

        async def two_paid() -> bool:
            return list((await s.states(ids)).values()).count("paid") == 2

        await eventually(two_paid, 20, "the two genuine payments settled")
        s.clock.advance(PAST_DEADLINE)

        async def decided() -> bool:
            return set((await s.states(ids)).values()) <= {"paid", "expired"}

        await eventually(decided, 20, "the unpaid orders read and expired")
        assert await s.states(ids) == {ids[0]: "paid", ids[1]: "paid",
                                       ids[2]: "expired", ids[3]: "expired"}
        assert await assert_rules_of_state(s.container.db, ids) == {"paid": 2, "expired": 2}


async def test_a_read_deferred_before_the_deadline_is_still_announced_at_it(
    container: Container,
) -> None:
    async with shop(container) as s:
        placed = [await s.checkout() for _ in range(5)]
        ids = [o["id"] for o in placed]
        await s.midtrans("POST", "/faults", STATUS_DOWN)
        s.clock.advance(timedelta(minutes=3))  # the scheduled reads come due and fail

        async def deferred() -> bool:
            views = [await s.order(i) for i in ids]
            return all(v["verification"]["state"] == "waiting_for_provider" for v in views)

        await eventually(deferred, 20, "reads deferred before the deadline")
        assert await s.events("order.payment_pending", ids) == []  # nothing is late yet
        s.clock.advance(PAST_DEADLINE)

        async def announced() -> bool:
            return len(await s.events("order.payment_pending", ids)) == len(ids)

        await eventually(announced, 10, "every merchant told the payment is pending")
        assert (await s.states(ids)) == dict.fromkeys(ids, "verifying")


async def test_a_fresh_feed_that_has_not_read_past_the_deadline_still_holds_expiry(
    container: Container,
) -> None:
    """Regression (review): a manual-transfer order expired at once whenever the feed was not
    yet stale, although no poll had read past its deadline: a transfer made just before it
    would have been missed."""
    async with shop(container, with_feed=True, feed_stale_after=timedelta(days=3)) as s:
        assert s.moota is not None
        placed = await s.checkout(rail="manual_transfer")
        await asyncio.sleep(0.5)  # the feed polls fine
        async with httpx.AsyncClient(verify=default_trust()) as c:
            r = await c.post(f"{s.moota.control_url}/faults", json={"kind": "down"})
            assert r.status_code == 200, r.text
        s.clock.advance(PAST_DEADLINE)  # the feed is not stale (3 days), but behind the deadline

        async def held() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "verifying"

        await eventually(held, 10, "the order held until the feed reads past its deadline")
        await asyncio.sleep(1.0)
        assert await held()
        assert await s.events("order.payment_pending", [placed["id"]]) == []  # not stale
        async with httpx.AsyncClient(verify=default_trust()) as c:
            await c.delete(f"{s.moota.control_url}/faults")

        async def expired() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "expired"

        await eventually(expired, 20, "expired once the feed read past the deadline")
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"expired": 1}


async def test_two_workers_with_claims_shorter_than_the_drain_never_read_twice(
    container: Container,
) -> None:
    """Regression (review): a claim that ran out while its read waited for a paced slot was
    claimed again by another worker, and both read it. The claim (1 s) is far shorter than the
    drain (12 reads at 5 a second) but longer than one read takes on a loaded machine: a read
    still in flight when its claim runs out may be made twice, which costs a request and
    settles nothing twice (evidence keys); what this specifies is the wait for the pace."""
    async with shop(container, reads_per_minute=300, claim=timedelta(seconds=1)) as s:
        second = build(s.container.settings, clock=s.clock)  # a second worker process
        await second.start()
        stop = asyncio.Event()
        other = asyncio.create_task(second.verifier.run(stop))
        try:
            # Twelve reads wait up to 2.4 s for their slots: most claims run out while waiting,
            # which is all this needs (twenty only made a longer drain).
            placed = [await s.checkout() for _ in range(12)]
            ids = [o["id"] for o in placed]
            await asyncio.gather(*(pay_at_midtrans(s, o) for o in placed))
            since = time.time()
            s.clock.advance(timedelta(minutes=3))  # every first read is due at once

            async def all_paid() -> bool:
                return set((await s.states(ids)).values()) == {"paid"}

            await eventually(all_paid, 30, "all paid by two workers")
        finally:
            stop.set()
            await asyncio.wait_for(other, timeout=10)
            await second.close()
        log = await s.midtrans("GET", f"/calls/log?operation=status&since={since}")
        assert sum(r["outcome"] == "ok" for r in log) == len(ids)  # each read exactly once
        await assert_rules_of_state(s.container.db, ids, settled=False)


async def test_a_method_switch_that_died_mid_call_leaves_no_unread_instrument(
    container: Container,
) -> None:
    """Regression (review): a switch of method journals its attempt ``creating`` before calling
    the provider; when the process died mid-call, no outbox event covered it (the order was
    already ``awaiting_payment``) and the verifier never claimed ``creating`` attempts, so the
    charge the provider made was never read or cancelled and the order went to a person at the
    end of the window, to stay there (the attempt stayed ``creating``, 0 status reads)."""
    from orchestrator.rails.base import Rail
    from orchestrator.services.issuance import switch_method

    async with shop(container) as s:
        placed = await s.checkout()
        assert placed["routing"]["served_by"] == "qris:midtrans:qris"
        # The customer switches to GoPay; Midtrans makes the charge, the process dies mid-call.
        await s.midtrans("POST", "/faults", {"kind": "timeout_after_success",
                                              "operation": "create", "channel": "gopay"})
        switching = asyncio.create_task(switch_method(
            s.container.issuance, merchant_id=s.merchant.merchant_id, order_id=placed["id"],
            rail=Rail.EWALLET, channel="gopay"))
        await asyncio.sleep(0.4)
        switching.cancel()  # what a killed process leaves: the journal row, nothing else
        await asyncio.gather(switching, return_exceptions=True)
        await s.midtrans("DELETE", "/faults")
        [orphan] = [a for a in await s.attempts(placed["id"]) if a.channel == "gopay"]
        assert orphan.state == "creating"
        s.clock.advance(timedelta(minutes=5))  # long past any create's budget; its read is due

        async def cancelled_at_midtrans() -> bool:
            # The charge is cancelled at Midtrans first, then the attempt's new state is
            # committed: wait for both.
            charge = await s.midtrans("GET", f"/transactions/{orphan.id}")
            [after] = [a for a in await s.attempts(placed["id"]) if a.id == orphan.id]
            return bool(charge["transaction_status"] == "cancel") and after.state in (
                "superseded", "failed")

        await eventually(cancelled_at_midtrans, 20, "the orphaned charge read and cancelled")
        [after] = [a for a in await s.attempts(placed["id"]) if a.id == orphan.id]
        assert after.state in ("superseded", "failed")
        s.clock.advance(PAST_DEADLINE)  # unpaid: the order expires, no person needed

        async def expired() -> bool:
            return (await s.states([placed["id"]]))[placed["id"]] == "expired"

        await eventually(expired, 20, "the unpaid order expired")
        assert await assert_rules_of_state(s.container.db, [placed["id"]]) == {"expired": 1}


async def test_a_worker_starting_during_an_outage_keeps_the_backlog_deferred(
    container: Container,
) -> None:
    """Regression (review): a worker's breakers are created on first use and read "closed"
    until they have synced with the cluster; a worker started during an outage released every
    deferred read of the route on its first tick (20 of 20 here), each then re-deferred and
    announced to its merchant a second time."""
    async with shop(container) as s:
        placed = [await s.checkout() for _ in range(20)]
        ids = [o["id"] for o in placed]
        await s.midtrans("POST", "/faults", {"kind": "down"})
        s.clock.advance(PAST_DEADLINE)

        async def deferred() -> bool:
            views = [await s.order(i) for i in ids]
            return all(v["verification"]["state"] == "waiting_for_provider" for v in views)

        await eventually(deferred, 20, "the backlog deferred")
        route = "qris:midtrans:qris"
        s.container.breakers.get(route).force_open("Midtrans maintenance")  # stays open
        await asyncio.sleep(0.5)
        told = len(await s.events("order.payment_pending", ids))
        assert told == len(ids)

        second = build(s.container.settings, clock=s.clock)  # a worker deployed now
        await second.start()
        stop = asyncio.Event()
        other = asyncio.create_task(second.verifier.run(stop))
        try:
            await asyncio.sleep(2)
            assert second.breakers.get(route).state is BreakerState.FORCED_OPEN
        finally:
            stop.set()
            await asyncio.wait_for(other, timeout=10)
            released = metric_value(second.metrics.exposition(),
                                    "lunas_verification_released_total", route=route)
            await second.close()
        assert released == 0
        assert await deferred()
        assert len(await s.events("order.payment_pending", ids)) == told


async def test_a_provider_flapping_through_half_open_tells_each_merchant_once(
    container: Container,
) -> None:
    """Regression (review): each half-open round released reads that were then refused (the
    trial permits were taken) or failed as trials and deferred again, and every such deferral
    of a ``verifying`` order announced ``order.payment_pending`` anew: three times per order in
    eight seconds of a 1-2 s breaker cycle here; about twelve an hour at the 5 min maximum."""
    async with shop(container) as s:
        placed = [await s.checkout() for _ in range(4)]
        ids = [o["id"] for o in placed]
        await s.midtrans("POST", "/faults", STATUS_DOWN)
        s.clock.advance(PAST_DEADLINE)

        async def deferred() -> bool:
            views = [await s.order(i) for i in ids]
            return all(v["verification"]["state"] == "waiting_for_provider" for v in views)

        await eventually(deferred, 20, "every read deferred")

        async def reopened() -> float:
            return metric_value(s.container.metrics.exposition(),
                                "lunas_breaker_transitions_total", route="qris:midtrans:qris",
                                from_state="half_open", to_state="open")

        async def three_rounds() -> bool:
            return await reopened() >= 3

        # Three open -> half-open -> open rounds, trials failing, each one a round in which
        # released reads were deferred again (a wait of 8 s gave three or four).
        await eventually(three_rounds, 20, "three half-open rounds failed")
        assert await reopened() >= 2
        told = await s.events("order.payment_pending", ids)
        assert sorted(e.aggregate_id for e in told) == sorted(ids)  # once each
        assert (await s.states(ids)) == dict.fromkeys(ids, "verifying")


async def test_a_cancelled_order_s_instrument_is_cancelled_at_its_provider_and_still_read(
    container: Container,
) -> None:
    """Regression (review): cancelling an order marked its gateway attempts ``failed`` on the
    spot: the QR stayed payable at Midtrans (never cancelled there) and was never read again,
    so a payment made on it, its notification lost, was never seen by anyone."""
    async with shop(container) as s:
        unpaid, paid = await s.checkout(), await s.checkout()
        unpaid_qr, paid_qr = [(await s.attempts(o["id"]))[-1] for o in (unpaid, paid)]
        await pay_at_midtrans(s, paid)  # a moment before the cancel; the notification is lost
        for order in (unpaid, paid):
            r = await s.client.post(f"/v1/orders/{order['id']}/cancel",
                                    headers=s.merchant.headers)
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text

        async def cancelled_at_midtrans() -> bool:
            charge = await s.midtrans("GET", f"/transactions/{unpaid_qr.id}")
            return bool(charge["transaction_status"] == "cancel")

        await eventually(cancelled_at_midtrans, 20, "the unpaid QR cancelled at Midtrans")
        s.clock.advance(timedelta(minutes=3))  # their scheduled reads come due

        async def read_back() -> bool:
            states = {a.id: a.state for o in (unpaid, paid) for a in await s.attempts(o["id"])}
            return states == {unpaid_qr.id: "failed", paid_qr.id: "paid"}

        await eventually(read_back, 20, "both instruments read after the cancel")
        cases = await cases_of(s, [paid["id"]])
        assert (cases[paid["id"]].reason, cases[paid["id"]].state) == (
            "payment_on_closed_order", "open")  # a person refunds (or honours) it
        assert await s.states([unpaid["id"], paid["id"]]) == {
            unpaid["id"]: "cancelled", paid["id"]: "cancelled"}


THROTTLED = {"kind": "rate_limit", "operation": "status", "retry_after_s": 4}


async def test_a_throttled_status_api_is_waited_out_and_never_fails_the_route_over(
    container: Container,
) -> None:
    """Regression (review): six 429'd status reads opened ``qris:midtrans:qris`` and the next
    checkout was failed over away from a healthy provider; Retry-After was parsed, never used.
    A 429 is neutral for the breaker, the read comes back at Retry-After, and meanwhile no
    worker sends the provider another status request."""
    route = "qris:midtrans:qris"
    async with shop(container) as s:
        placed = [await s.checkout() for _ in range(6)]
        ids = [o["id"] for o in placed]
        await s.midtrans("POST", "/faults", THROTTLED)
        s.clock.advance(PAST_DEADLINE)  # six reads due at once: each is answered 429

        async def attempts() -> list[Any]:
            return [a for i in ids for a in await s.attempts(i)]

        async def all_throttled() -> bool:
            return all((a.last_check or "").startswith("throttled") for a in await attempts())

        await eventually(all_throttled, 20, "every read throttled")
        for a in await attempts():  # rescheduled at Retry-After, not deferred, not 0.3 s
            assert a.deferred_on is None
            # The first 429 pauses every read for 4 s; a read throttled after it waits out what
            # is left of that pause, which is less by however long the machine took to get to it.
            assert a.next_check_at - a.last_checked_at >= timedelta(seconds=2), a.last_check
        assert s.container.breakers.get(route).state is BreakerState.CLOSED
        sent = len(await s.midtrans("GET", "/calls/log?operation=status"))
        assert 1 <= sent <= 6

        # Due again by our clock while the provider's pause (real seconds) still runs: the
        # reads are rescheduled without a request.
        checks = {a.id: a.checks for a in await attempts()}
        s.clock.advance(timedelta(seconds=10))

        async def read_again() -> bool:
            return all(a.checks > checks[a.id] for a in await attempts())

        await eventually(read_again, 3, "every read retried within the pause")
        assert len(await s.midtrans("GET", "/calls/log?operation=status")) == sent
        assert s.container.breakers.get(route).state is BreakerState.CLOSED
        again = await s.checkout()
        assert again["routing"]["served_by"] == route  # no failover from a healthy provider

        await s.midtrans("DELETE", "/faults")

        async def decided() -> bool:
            return set((await s.states(ids)).values()) == {"expired"}

        await eventually(decided, 30, "every unpaid order expired once read")
        seen = s.container.metrics.exposition()
        assert metric_value(seen, "lunas_verification_reads_total", provider="midtrans",
                            outcome="throttled") >= 12
        assert metric_value(seen, "lunas_breaker_transitions_total", route=route,
                            from_state="closed", to_state="open") == 0
        assert metric_value(seen, "lunas_breaker_calls_total", route=route,
                            outcome="neutral") >= 1
        await assert_rules_of_state(s.container.db, ids)


async def test_an_answer_lunas_cannot_read_keeps_the_route_up_and_the_order_unexpired(
    container: Container,
) -> None:
    """Regression (review): an unknown Midtrans status (``on_hold``) or a field of an
    unexpected type became "provider unavailable": each read counted against the breaker and
    was retried every 30 s forever. Now it is unreadable: neutral for the breaker, retried with
    growing gaps, said on the attempt and in a metric, and the order is never expired unread."""
    route = "qris:midtrans:qris"
    async with shop(container) as s:
        placed = [await s.checkout() for _ in range(2)]
        ids = [o["id"] for o in placed]
        held, odd_amount = (o["payment"]["attempt_id"] for o in placed)
        await s.midtrans("POST", "/answer", {"order_id": held,
                                             "fields": {"transaction_status": "on_hold"}})
        await s.midtrans("POST", "/answer", {"order_id": odd_amount, "fields": {
            "transaction_status": "settlement", "gross_amount": 125_000}})
        s.clock.advance(PAST_DEADLINE)

        async def attempts() -> list[Any]:
            return [a for i in ids for a in await s.attempts(i)]

        async def read_often() -> bool:
            return all((a.last_check or "").startswith("unreadable answer (4 in a row)")
                       for a in await attempts())

        await eventually(read_often, 20, "four unreadable reads of each attempt")
        for a in await attempts():
            assert a.state == "active" and a.deferred_on is None
            # 0.3 s doubled per unreadable read in a row: the fourth waits 2.4 s
            assert a.next_check_at - a.last_checked_at == timedelta(seconds=2.4), a.last_check
        by_id = {a.id: a.last_check for a in await attempts()}
        assert "on_hold" in by_id[held]
        assert "gross_amount" in by_id[odd_amount]
        assert s.container.breakers.get(route).state is BreakerState.CLOSED
        assert await s.states(ids) == dict.fromkeys(ids, "verifying")  # never expired unread
        seen = s.container.metrics.exposition()
        assert metric_value(seen, "lunas_verification_reads_total", provider="midtrans",
                            outcome="unreadable") >= 8
        assert metric_value(seen, "lunas_breaker_transitions_total", route=route,
                            from_state="closed", to_state="open") == 0
        again = await s.checkout()
        assert again["routing"]["served_by"] == route

        s.clock.advance(timedelta(hours=3))  # the verification window runs out, still unread

        async def reviewed() -> bool:
            return set((await s.states(ids)).values()) == {"needs_review"}

        await eventually(reviewed, 10, "orders in review")
        for i in ids:
            assert (await s.order(i))["review_reason"] == "verification_window_exhausted"
        await assert_rules_of_state(s.container.db, ids)


async def test_a_backlog_on_one_provider_never_holds_up_the_reads_of_another(
    container: Container,
) -> None:
    """Regression (review): one provider's backlog of due reads (Midtrans back from an outage,
    its pace slow) filled the verifier's claimed batch and every concurrency slot with reads
    waiting for that provider's paced slot, so a Xendit read due meanwhile waited for the whole
    Midtrans drain though Xendit's own pace stood idle: its paid order stayed unconfirmed (and
    past its deadline, unexpired or sent to a person) for as long as another provider's backlog
    took to drain. Each provider's reads go at its own pace."""
    async with shop(container, paces={"midtrans": 60, "xendit": 6_000}, batch=4,
                    concurrency=2) as s:
        await s.xendit("POST", "/config", {"callback_url": "http://127.0.0.1:9/lost"})
        backlog = [await s.checkout() for _ in range(8)]  # QRIS on Midtrans, first read 2 min on
        assert {o["routing"]["served_by"] for o in backlog} == {"qris:midtrans:qris"}
        va = await s.checkout(rail="va", channel="bca")  # first read an hour on: due after them
        assert va["routing"]["served_by"] == "va:xendit:bca"
        attempt = (await s.attempts(va["id"]))[-1]
        for o in backlog:
            await pay_at_midtrans(s, o)
        await s.xendit("POST", "/pay", {"kind": "va", "external_id": attempt.id,
                                        "amount": attempt.transfer_amount})
        s.clock.advance(timedelta(hours=1, minutes=1))  # every first read due at once
        ids = [o["id"] for o in backlog]
        unpaid_when_va_paid: list[int] = []

        async def va_paid() -> bool:
            states = await s.states([va["id"], *ids])
            if states[va["id"]] != "paid":
                return False
            unpaid_when_va_paid.append(sum(states[i] != "paid" for i in ids))
            return True

        await eventually(va_paid, 30, "the Xendit payment confirmed")
        # Midtrans's pace gives a read every 1.1 s whatever the machine's speed: the Xendit read,
        # needing none of it, is done while most of the backlog still waits (before: behind all
        # but the last two or so, 13.6 s in at a read every 2.2 s).
        assert unpaid_when_va_paid[-1] >= 4, unpaid_when_va_paid

        async def all_paid() -> bool:
            return set((await s.states(ids)).values()) == {"paid"}

        await eventually(all_paid, 40, "the Midtrans backlog paid")
        await assert_rules_of_state(s.container.db, [*ids, va["id"]], settled=False)
