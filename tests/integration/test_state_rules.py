"""Rules of state under races and crashes (ARCHITECTURE.md §3), one test per bug a review found
and reproduced: each failed before its fix."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from orchestrator.domain.ids import new_id
from orchestrator.rails.base import Rail, Route
from orchestrator.rails.router import Hop, IssueResult
from orchestrator.services.expiry import expire_due_orders, release_quarantined_codes
from orchestrator.services.orders import cancel_order
from orchestrator.services.settlement import Payment, apply_payment
from orchestrator.store.tables import evidence, orders, outbox, payment_attempts, review_cases
from tests.integration.test_reconciliation import capture, moota_body, ops, upload  # noqa: F401
from tests.support import bca_statement, new_merchant


def now():
    return datetime.now(UTC)


async def test_one_credit_seen_by_push_and_statement_is_not_a_second_payment(
    client, container, ops  # noqa: F811 - the fixture imported from test_reconciliation
):
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    body = moota_body(m.account_number, pay)
    secret = container.settings.mutation_push_secret.encode()
    r = await client.post(
        "/v1/mutations/push",
        content=body,
        headers={
            "Signature": hmac.new(secret, body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 200 and r.json()["matched"] == 1
    # the same bank line, later uploaded by finance from the KlikBCA export
    rep = (
        await upload(
            client,
            ops,
            m,
            bca_statement(
                m.account_number, [(now(), f"TRSF E-BANKING CR {pay}.00 ANDI", pay, "CR")]
            ),
        )
    ).json()
    async with container.db.read() as conn:
        cases = (
            await conn.execute(
                sa.select(
                    review_cases.c.reason, review_cases.c.recommended_action, review_cases.c.amount
                ).where(review_cases.c.order_id == order["id"])
            )
        ).all()
        ev = (
            await conn.execute(
                sa.select(evidence.c.unique_key, evidence.c.verdict).where(
                    evidence.c.order_id == order["id"]
                )
            )
        ).all()
    assert (rep["new"], rep["matched"], rep["needs_review"]) == (1, 0, 1)
    # One payment: settled once, and the second sighting goes to a person to match, not refund.
    assert [tuple(c) for c in cases] == [("possible_duplicate", "match_manually", pay)]
    assert [v for _, v in ev] == ["settle"]


async def _events_for(container, aggregate_id):
    async with container.db.read() as conn:
        return (await conn.execute(sa.select(outbox.c.event_type)
                                   .where(outbox.c.aggregate_id == aggregate_id))).all()


async def _gateway_order(container, m, state="captured"):
    oid = new_id("ord")
    t = now()
    async with container.db.transaction() as conn:
        await conn.execute(
            orders.insert().values(
                id=oid,
                merchant_id=m.merchant_id,
                merchant_order_id=f"INV-{uuid.uuid4().hex[:8]}",
                amount=100_000,
                currency="IDR",
                state=state,
                rail="va",
                channel="bca",
                customer_name="A",
                customer_email="a@example.com",
                customer_phone="+6281234567890",
                metadata={},
                created_at=t,
                updated_at=t,
                expires_at=t + timedelta(hours=1),
            )
        )
    return oid


async def _attempt(container, oid, state="active", **kw):
    aid = new_id("att")
    t = now()
    async with container.db.transaction() as conn:
        await conn.execute(
            payment_attempts.insert().values(
                id=aid,
                order_id=oid,
                rail=kw.get("rail", "va"),
                provider=kw.get("provider", "midtrans"),
                channel="bca",
                state=state,
                transfer_amount=kw.get("amount", 100_000),
                created_at=t,
                updated_at=t,
                expires_at=t + timedelta(hours=1),
                **{k: v for k, v in kw.items() if k not in ("rail", "provider", "amount")},
            )
        )
    return aid


ROUTE = Route(rail=Rail("va"), provider="midtrans", channel="bca")


async def test_an_instrument_served_after_cancel_is_superseded_not_announced(container):
    m = await new_merchant(container)
    oid = await _gateway_order(container, m)
    aid = await _attempt(container, oid, state="creating")  # worker/request issuing...
    await cancel_order(
        container.db,
        merchant_id=m.merchant_id,
        order_id=oid,
        now=now(),
        quarantine=timedelta(hours=1),
    )  # ...merchant cancels meanwhile
    # journal.served then finish(), as router.issue/_capture_gateway/on_order_captured do
    async with container.db.transaction() as conn:
        await conn.execute(
            payment_attempts.update().where(payment_attempts.c.id == aid).values(state="active")
        )
    finished = await container.issuance.finish(
        oid,
        IssueResult(served=ROUTE, attempt_id=aid, hops=[Hop(route=ROUTE.key, outcome="served")]),
    )
    body = finished.body
    async with container.db.read() as conn:
        evs = [
            r.event_type
            for r in await conn.execute(
                sa.select(outbox.c.event_type)
                .where(outbox.c.aggregate_id == oid)
                .order_by(outbox.c.id)
            )
        ]
        st = (
            await conn.execute(
                sa.select(payment_attempts.c.state).where(payment_attempts.c.id == aid)
            )
        ).scalar_one()
    assert "order.awaiting_payment" not in evs
    assert not finished.live
    assert body["status"] == "cancelled"
    assert st == "superseded"  # still watched, and a cancel at the provider is queued
    assert "attempt.cancel_requested" in [
        r.event_type for r in await _events_for(container, aid)]


async def test_two_concurrent_switches_leave_exactly_one_active_attempt(container):
    m = await new_merchant(container)
    oid = await _gateway_order(container, m, state="awaiting_payment")
    a = await _attempt(container, oid)  # switch request 1 served
    b = await _attempt(container, oid)  # switch request 2 (retry/double click) served
    r1 = await container.issuance.finish(
        oid, IssueResult(served=ROUTE, attempt_id=a), switching=True
    )
    r2 = await container.issuance.finish(
        oid, IssueResult(served=ROUTE, attempt_id=b), switching=True
    )
    async with container.db.read() as conn:
        states = dict(
            (r.id, r.state)
            for r in await conn.execute(
                sa.select(payment_attempts.c.id, payment_attempts.c.state).where(
                    payment_attempts.c.order_id == oid
                )
            )
        )
        cancels = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(outbox)
                .where(
                    outbox.c.event_type == "attempt.cancel_requested",
                    outbox.c.aggregate_id.in_([a, b]),
                )
            )
        ).scalar_one()
    # Exactly one instrument stays live, and the later reply shows it (not a cancelled one).
    assert list(states.values()).count("active") == 1, states
    live = next(k for k, v in states.items() if v == "active")
    # The later switch lost (its instrument was superseded by the first): not live, so its
    # request is refused rather than answered 201 (switch_method), while the reply shows the
    # live one.
    assert (r1.live, r2.live) == (True, False)
    assert r2.body["payment"]["attempt_id"] == live
    assert cancels == 1
    assert r1.body["payment"]["attempt_id"] in (a, b)


async def test_codes_of_other_attempts_return_after_the_order_is_paid(client, container):
    m = await new_merchant(container)
    order = await capture(client, m)  # manual transfer attempt holds amount+code
    async with container.db.read() as conn:
        manual_id = (
            await conn.execute(
                sa.select(payment_attempts.c.id).where(payment_attempts.c.order_id == order["id"])
            )
        ).scalar_one()
    va = await _attempt(
        container, order["id"], amount=order["amount"]
    )  # customer switched to VA and paid there
    t = now()
    async with container.db.transaction() as conn:
        await apply_payment(
            conn,
            Payment(
                attempt_id=va,
                amount=order["amount"],
                evidence_key=f"x:{va}",
                kind="provider_status",
                observed_at=t,
                details={},
            ),
            now=t,
            quarantine=timedelta(hours=1),
        )
    far = t + timedelta(days=365)
    await release_quarantined_codes(container.db, now=far)
    async with container.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(
                    payment_attempts.c.state,
                    payment_attempts.c.holds_code,
                    payment_attempts.c.code_held_until,
                    payment_attempts.c.closed_at,
                ).where(payment_attempts.c.id == manual_id)
            )
        ).one()
    assert not row.holds_code


async def test_expiry_never_closes_an_unverified_attempt(container):
    m = await new_merchant(container)
    oid = await _gateway_order(container, m)
    aid = await _attempt(container, oid, state="unknown")
    handled = await expire_due_orders(
        container.db, now=now() + timedelta(hours=2), quarantine=timedelta(hours=1), batch=10_000
    )
    assert handled >= 1
    async with container.db.read() as conn:
        st = (
            await conn.execute(
                sa.select(payment_attempts.c.state).where(payment_attempts.c.id == aid)
            )
        ).scalar_one()
        ost = (await conn.execute(sa.select(orders.c.state).where(orders.c.id == oid))).scalar_one()
    assert st == "unknown"  # left for its status read
    assert ost == "verifying"  # the order waits for it instead of expiring blind


async def test_a_crash_between_served_and_finish_does_not_issue_twice(container):
    from orchestrator.outbox.relay import OutboxEvent

    m = await new_merchant(container)
    oid = await _gateway_order(container, m)
    a = await _attempt(container, oid)  # request: journal.served committed, then the api died
    ev = OutboxEvent(
        id=0,
        event_id="x",
        event_type="order.captured",
        aggregate_id=oid,
        merchant_id=m.merchant_id,
        payload={},
        attempts=1,
        created_at=now(),
    )
    await container.gateway_jobs.on_order_captured(ev)
    async with container.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(payment_attempts.c.id, payment_attempts.c.rail, payment_attempts.c.state)
                .where(payment_attempts.c.order_id == oid)
                .order_by(payment_attempts.c.created_at)
            )
        ).all()
        ost = (await conn.execute(sa.select(orders.c.state).where(orders.c.id == oid))).scalar_one()
    assert [(r.id, r.state) for r in rows] == [(a, "active")]  # finished, not issued again
    assert ost == "awaiting_payment"


async def test_a_verifying_order_expires_once_resolved_or_goes_to_a_person(container):
    from orchestrator.services.expiry import settle_verifying_orders

    m = await new_merchant(container)
    resolved, stuck = await _gateway_order(container, m), await _gateway_order(container, m)
    a = await _attempt(container, resolved, state="unknown")
    await _attempt(container, stuck, state="unknown")
    later = now() + timedelta(hours=2)
    q, window = timedelta(hours=1), timedelta(hours=6)
    while await expire_due_orders(container.db, now=later, quarantine=q, batch=10_000):
        pass

    async def state(oid):
        async with container.db.read() as conn:
            return (await conn.execute(sa.select(orders.c.state, orders.c.review_reason)
                                       .where(orders.c.id == oid))).one()

    assert (await state(resolved)).state == (await state(stuck)).state == "verifying"
    async with container.db.transaction() as conn:  # the status read found nothing at the provider
        await conn.execute(payment_attempts.update().where(payment_attempts.c.id == a)
                           .values(state="failed"))
    await settle_verifying_orders(container.db, now=later, quarantine=q, window=window,
                                  batch=10_000)
    assert (await state(resolved)).state == "expired"
    assert (await state(stuck)).state == "verifying"  # still inside its window
    await settle_verifying_orders(container.db, now=later + window, quarantine=q, window=window,
                                  batch=10_000)
    assert tuple(await state(stuck)) == ("needs_review", "verification_window_exhausted")


async def test_orders_parked_behind_a_down_provider_never_block_decidable_ones(container):
    """Regression (review): the verifying sweep took the oldest ``batch`` orders; when those all
    waited on a provider that was down, nothing behind them was ever decided (rule 6)."""
    from orchestrator.services.expiry import settle_verifying_orders

    m = await new_merchant(container)
    parked = [await _gateway_order(container, m, state="verifying") for _ in range(3)]
    for oid in parked:
        await _attempt(container, oid, state="active")  # its read is deferred: provider down
    decidable = await _gateway_order(container, m, state="verifying")  # created last: newest
    await _attempt(container, decidable, state="failed")  # read: nothing was paid
    later = now() + timedelta(hours=2)
    while await settle_verifying_orders(container.db, now=later, quarantine=timedelta(hours=1),
                                        window=timedelta(hours=6), batch=2):
        pass
    async with container.db.read() as conn:
        states = dict((await conn.execute(sa.select(orders.c.id, orders.c.state).where(
            orders.c.id.in_([*parked, decidable])))).all())
    assert states[decidable] == "expired"
    assert {states[o] for o in parked} == {"verifying"}


class _StaleFeed:
    """The sources as the sweep sees them while the mutation feed is down: providers up."""

    def route_unavailable(self, route_key):
        return False

    def retry_at(self, route_key):
        return None

    def feed_stale(self, now):
        return True

    def feed_caught_up(self, deadline):
        return False

    def next_feed_poll(self, now):
        return None


@pytest.mark.parametrize("waiting", ["verifying", "needs_review"])
async def test_orders_waiting_on_a_stale_feed_never_block_decidable_ones(container, waiting):
    """Regression (review of this sweep): manual-transfer orders waiting on a stale feed, oldest
    first, filled every batch, so gateway orders behind them whose provider was back (or whose
    window-exhausted review their provider had since answered) were never decided."""
    from orchestrator.services.expiry import settle_verifying_orders

    m = await new_merchant(container)
    reason = "verification_window_exhausted" if waiting == "needs_review" else None
    parked = [await _gateway_order(container, m, state=waiting) for _ in range(3)]
    decidable = await _gateway_order(container, m, state=waiting)  # created last: newest
    async with container.db.transaction() as conn:
        await conn.execute(orders.update().where(orders.c.id.in_([*parked, decidable]))
                           .values(review_reason=reason))
    for oid in parked:
        await _attempt(container, oid, state="active", rail="manual_transfer", provider="bank")
    await _attempt(container, decidable, state="failed")  # read: nothing was paid
    later = now() + timedelta(hours=2)
    while await settle_verifying_orders(container.db, now=later, quarantine=timedelta(hours=1),
                                        window=timedelta(hours=6), batch=2,
                                        health=_StaleFeed()):
        pass
    async with container.db.read() as conn:
        states = dict((await conn.execute(sa.select(orders.c.id, orders.c.state).where(
            orders.c.id.in_([*parked, decidable])))).all())
    assert states[decidable] == "expired"
    assert {states[o] for o in parked} == {waiting}
