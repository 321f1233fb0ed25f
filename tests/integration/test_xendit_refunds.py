"""Refunds made at Xendit, outside Lunas, reach a person and the merchant as Midtrans's do.

A paid e-wallet charge refunded in part (in Xendit's dashboard, say) still says ``SUCCEEDED``;
only its ``refunded_amount`` tells. Each refund opens one ``refunded_at_provider`` case for what
it took back, the order stays ``paid`` (no edge leaves paid), and the merchant hears
``review_case.opened``; reading the charge again changes nothing.

Runs the real service with both simulators (the ``stack`` of test_provider_webhooks), on the
session's PostgreSQL and Redis; the worker's relay and verifier run in-process.
"""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from orchestrator.rails.base import NeutralStatus, ProviderStatus
from orchestrator.services.reversals import apply_reversal
from orchestrator.services.status_reads import paid_evidence_key
from orchestrator.store.tables import (
    evidence,
    orders,
    outbox,
    payment_attempts,
    provider_deliveries,
)
from orchestrator.tls import default_trust
from tests.integration.test_failover import Stack, sims  # noqa: F401
from tests.integration.test_provider_webhooks import (  # noqa: F401
    lock_waiters,
    make_due,
    order_and_attempt,
    order_state,
    outcomes,
    review,
    run_relay,
    run_verifier,
    settle_directly,
    settled_quietly,
    sim_post,
    stack,
    wait_for,
)

REFUNDED = ("refunded_at_provider", "check_at_source")


async def paid_xendit_ewallet_order(stack: Stack) -> tuple[str, Any]:  # noqa: F811
    """A DANA order paid through Xendit, its capture callback applied."""
    order_id, attempt = await order_and_attempt(stack, "ewallet", "dana", "ewallet:xendit:dana")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "ewallet", "reference_id": attempt.id, "amount": attempt.transfer_amount})
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    return order_id, attempt


async def refund_at_xendit(stack: Stack, attempt: Any, amount: int, *,  # noqa: F811
                           notify: bool) -> dict[str, Any]:
    refunded: dict[str, Any] = await sim_post(stack.sims.xendit.control_url, "/refund", {
        "reference_id": attempt.id, "amount": amount, "notify": notify})
    return refunded


async def refund_callbacks(stack: Stack, attempt: Any) -> list[dict[str, Any]]:  # noqa: F811
    async with httpx.AsyncClient(verify=default_trust()) as c:
        sent = (await c.get(f"{stack.sims.xendit.control_url}/callbacks")).json()
    return [s["body"] for s in sent if s["event"] == "refund.succeeded"
            and s["body"]["data"]["payment_id"] == attempt.provider_ref]


async def merchant_told(stack: Stack, order_id: str) -> list[tuple[str, int, str]]:  # noqa: F811
    async with stack.container.db.read() as conn:
        told = (await conn.execute(sa.select(outbox.c.payload).where(
            outbox.c.aggregate_id == order_id,
            outbox.c.event_type == "review_case.opened").order_by(outbox.c.id))).scalars().all()
    return [(t["reason"], t["amount"], t["provider_status"]) for t in told]


async def reversal_evidence(stack: Stack, attempt_id: str) -> list[int]:  # noqa: F811
    async with stack.container.db.read() as conn:
        return sorted(int(a) for a in (await conn.execute(sa.select(evidence.c.amount).where(
            evidence.c.attempt_id == attempt_id,
            evidence.c.verdict == "refunded_at_provider"))).scalars())


async def refund_deliveries(stack: Stack, attempt: Any) -> int:  # noqa: F811
    async with stack.container.db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(
            provider_deliveries).where(provider_deliveries.c.attempt_id == attempt.id,
                                       provider_deliveries.c.event_key.like("xendit:refund:%"))
        )).scalar_one())


async def test_each_partial_refund_of_a_paid_xendit_e_wallet_order_opens_one_case_for_its_amount(
    stack: Stack,  # noqa: F811
) -> None:
    """The merchant refunds 20000 of a paid 125000 DANA payment at Xendit, then 30000 more.
    Xendit's ``refund.succeeded`` callback names the payment by its ``ewc_`` id, not by our
    reference; it is matched to the attempt and confirmed by a status read, which says how much
    went back so far. Two cases, for 20000 and the 30000 more; the order stays paid; the
    merchant hears each. The same callback again, or another refund callback when nothing more
    went back, opens nothing. Before: the refund callback was stored as naming no attempt
    ("ignored"), and a read said SUCCEEDED, paid: nobody heard of either refund."""
    order_id, attempt = await paid_xendit_ewallet_order(stack)
    for count, amount in enumerate((20_000, 30_000), start=1):
        await refund_at_xendit(stack, attempt, amount, notify=True)
        await wait_for(lambda: refund_deliveries(stack, attempt), count)
        await settled_quietly(stack, attempt.id)
    assert (await order_state(stack, order_id)()) == "paid"
    assert sorted(await review(stack, order_id)) == [(*REFUNDED, 20_000), (*REFUNDED, 30_000)]
    assert await merchant_told(stack, order_id) == [
        ("refunded_at_provider", 20_000, "PARTIALLY_REFUNDED"),
        ("refunded_at_provider", 30_000, "PARTIALLY_REFUNDED")]
    # Xendit repeats the last callback, and a callback of a refund that moved nothing more
    # arrives (another refund id): both read the same 50000, and change nothing.
    last = (await refund_callbacks(stack, attempt))[-1]
    again = {**last, "data": {**last["data"], "id": "rfd-replayed"}}
    token = stack.container.settings.providers.xendit_callback_token
    for body in (last, again):
        r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(body),
                                    headers={"x-callback-token": token})
        assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    assert len(await review(stack, order_id)) == 2
    assert await reversal_evidence(stack, attempt.id) == [20_000, 30_000]
    assert [o for v, o in await outcomes(stack, attempt.id) if v][-1] == (
        "status read: provider says PARTIALLY_REFUNDED; reversal already recorded")
    # A refund that failed at Xendit moved nothing: noted as such, not as "unreadable".
    failed = {**last, "event": "refund.failed",
              "data": {**last["data"], "id": "rfd-failed", "status": "FAILED"}}
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(failed),
                                headers={"x-callback-token": token})
    assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    assert [o for v, o in await outcomes(stack, attempt.id) if v][-1] == (
        "no change: refund.failed: no money moved, nothing to apply")
    assert len(await review(stack, order_id)) == 2
    assert (await order_state(stack, order_id)()) == "paid"


async def test_a_partial_refund_found_by_a_status_read_settles_and_opens_a_case_for_the_refund(
    stack: Stack,  # noqa: F811
) -> None:
    """The capture callback was lost, and the merchant refunded 20000 of the payment at Xendit
    before Lunas read the charge. The read says ``SUCCEEDED`` with ``refunded_amount`` 20000:
    paid, then partly refunded. Both are facts: the payment settles the order once, and one
    ``refunded_at_provider`` case opens for 20000. Reading it again changes nothing. Before:
    the read said paid and the refund reached nobody."""
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    order_id, attempt = await order_and_attempt(stack, "ewallet", "dana", "ewallet:xendit:dana")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "ewallet", "reference_id": attempt.id, "amount": attempt.transfer_amount})
    await refund_at_xendit(stack, attempt, 20_000, notify=False)
    await make_due(stack, attempt.id)
    await run_verifier(stack.container, order_state(stack, order_id), "paid")
    await wait_for(lambda: review(stack, order_id), [(*REFUNDED, 20_000)])
    async with stack.container.db.read() as conn:
        verdicts = sorted(e.verdict for e in await conn.execute(
            sa.select(evidence).where(evidence.c.order_id == order_id)))
    assert verdicts == ["refunded_at_provider", "settle"]
    # The verifier reads a paid attempt no more; the refund's callback, delivered late, asks
    # for a read of its own, which finds the same 20000 and records nothing new.
    token = stack.container.settings.providers.xendit_callback_token
    late = {"event": "refund.succeeded", "business_id": "b1", "created": "2025-03-10T03:00:00Z",
            "data": {"id": "rfd-late", "payment_id": attempt.provider_ref, "amount": 20_000,
                     "payment_method_type": "EWALLET", "currency": "IDR", "status": "SUCCEEDED",
                     "reference_id": "refund-by-merchant"}}
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(late),
                                headers={"x-callback-token": token})
    assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    assert [o for v, o in await outcomes(stack, attempt.id) if v] == [
        "status read: provider says PARTIALLY_REFUNDED; reversal already recorded"]
    assert await review(stack, order_id) == [(*REFUNDED, 20_000)]
    assert await reversal_evidence(stack, attempt.id) == [20_000]


async def test_a_refund_callback_the_charge_does_not_show_yet_is_read_again_until_it_does(
    stack: Stack,  # noqa: F811
) -> None:
    """Xendit's token authenticates a callback whole: a ``refund.succeeded`` it sends happened.
    Here the charge does not show it yet when the confirming read runs (still ``SUCCEEDED``,
    nothing refunded). The delivery is read again instead of closed, and once the charge shows
    the refund its case opens. Before: "no reversal", and the refund reached nobody."""
    order_id, attempt = await paid_xendit_ewallet_order(stack)
    stamp = "2026-11-30T07:00:00.000Z"
    callback = {"event": "refund.succeeded", "business_id": "biz", "created": stamp, "data": {
        "id": "rfd-early", "payment_request_id": None, "payment_id": attempt.provider_ref,
        "reference_id": "refund-early", "channel_code": "DANA", "currency": "IDR",
        "amount": 20_000, "status": "SUCCEEDED", "created": stamp, "updated": stamp}}
    token = stack.container.settings.providers.xendit_callback_token
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(callback),
                                headers={"x-callback-token": token})
    assert r.status_code == 200, r.text
    await wait_for(lambda: refund_deliveries(stack, attempt), 1)

    async def requeued() -> int:
        async with stack.container.db.read() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
                outbox.c.event_type == "provider.delivery", outbox.c.aggregate_id == attempt.id,
                outbox.c.status == "pending",
                outbox.c.event_id.like("rv1_%")))).scalar_one())

    await run_relay(stack.container, requeued, 1)
    assert [o for v, o in await outcomes(stack, attempt.id) if v][-1] is None  # not closed
    assert await review(stack, order_id) == []

    await refund_at_xendit(stack, attempt, 20_000, notify=False)  # the charge catches up
    async with stack.container.db.transaction() as conn:
        await conn.execute(outbox.update().where(
            outbox.c.event_type == "provider.delivery", outbox.c.aggregate_id == attempt.id,
            outbox.c.status == "pending").values(available_at=stack.container.clock.now()))
    await settled_quietly(stack, attempt.id)
    assert await review(stack, order_id) == [(*REFUNDED, 20_000)]
    assert (await order_state(stack, order_id)()) == "paid"


async def test_a_refund_whose_charge_does_not_say_how_much_opens_no_case_until_it_does(
    stack: Stack,  # noqa: F811
) -> None:
    """The merchant refunds the whole 125000 at Xendit; the ``refund.succeeded`` callback asks
    for a read, and the charge says ``REFUNDED`` with ``refunded_amount`` null. Nothing Xendit
    documents says REFUNDED means all of it, so the read is unreadable: no case, and the
    delivery is queued to be read again (with the unreadable back-off). Once the charge says
    how much, one case opens for that. Before: a case opened for the whole payment on the
    figure nobody read, and the read that said how much opened a second."""
    order_id, attempt = await paid_xendit_ewallet_order(stack)
    await sim_post(stack.sims.xendit.control_url, "/refund", {
        "reference_id": attempt.id, "amount": attempt.transfer_amount, "notify": True,
        "show_refunded_amount": False})
    await wait_for(lambda: refund_deliveries(stack, attempt), 1)

    async def queued_again() -> list[int]:
        """Unreadable answers in a row, per delivery queued to be read again."""
        async with stack.container.db.read() as conn:
            return [p["unreadable_tries"] for p in (await conn.execute(
                sa.select(outbox.c.payload).where(
                    outbox.c.event_type == "provider.delivery",
                    outbox.c.aggregate_id == attempt.id, outbox.c.status == "pending",
                    outbox.c.event_id.like("rv1_%")))).scalars()]

    await run_relay(stack.container, queued_again, [1])
    assert [o for v, o in await outcomes(stack, attempt.id) if v][-1] is None  # not closed
    assert await review(stack, order_id) == []
    assert await merchant_told(stack, order_id) == []

    charge = stack.sims.xendit.store.charge_by_reference(attempt.id)
    assert charge is not None
    charge["refunded_amount"] = attempt.transfer_amount  # Xendit says how much, at last
    async with stack.container.db.transaction() as conn:
        await conn.execute(outbox.update().where(
            outbox.c.event_type == "provider.delivery", outbox.c.aggregate_id == attempt.id,
            outbox.c.status == "pending").values(available_at=stack.container.clock.now()))
    await settled_quietly(stack, attempt.id)
    assert await review(stack, order_id) == [(*REFUNDED, attempt.transfer_amount)]
    assert await merchant_told(stack, order_id) == [
        ("refunded_at_provider", attempt.transfer_amount, "REFUNDED")]
    assert (await order_state(stack, order_id)()) == "paid"


async def test_a_refunded_payment_first_learnt_from_a_read_is_dated_when_it_was_paid(
    stack: Stack,  # noqa: F811
) -> None:
    """The capture callback was lost, and three days after the payment the merchant refunded
    20000 of it at Xendit; then Lunas reads the charge. The charge's ``updated`` is the
    refund's time by now; the payment is recorded at its own, the time the Transactions API
    lists it at. Before: the payment's evidence was dated at the refund."""
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    order_id, attempt = await order_and_attempt(stack, "ewallet", "dana", "ewallet:xendit:dana")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "ewallet", "reference_id": attempt.id, "amount": attempt.transfer_amount})
    [payment] = [t for t in stack.sims.xendit.store.transactions
                 if t["reference_id"] == attempt.id]
    paid_at = datetime.fromisoformat(payment["created"])
    await sim_post(stack.sims.xendit.control_url, "/refund", {
        "reference_id": attempt.id, "amount": 20_000,
        "at": (paid_at + timedelta(days=3)).isoformat()})
    await make_due(stack, attempt.id)
    await run_verifier(stack.container, order_state(stack, order_id), "paid")
    await wait_for(lambda: review(stack, order_id), [(*REFUNDED, 20_000)])
    async with stack.container.db.read() as conn:
        dated = (await conn.execute(sa.select(evidence.c.observed_at).where(
            evidence.c.order_id == order_id, evidence.c.verdict == "settle"))).scalar_one()
    assert dated == paid_at


async def test_a_void_of_a_paid_charge_notified_by_xendit_opens_a_case_for_all_of_it(
    stack: Stack,  # noqa: F811
) -> None:
    """The merchant voids a paid DANA payment the same day in Xendit's dashboard, and Xendit
    sends ``ewallet.void`` with the charge, now ``VOIDED``. Xendit voids only a charge that
    succeeded, for all of it: confirmed by a read, one case for the whole payment, the order
    still paid, the merchant told; the callback again changes nothing. Before: the callback
    was unreadable (an event Lunas did not know), and a VOIDED charge read as failed; the
    money's return reached nobody."""
    order_id, attempt = await paid_xendit_ewallet_order(stack)
    await sim_post(stack.sims.xendit.control_url, "/void", {
        "reference_id": attempt.id, "notify": True})

    async def void_deliveries() -> int:
        async with stack.container.db.read() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(
                provider_deliveries).where(
                    provider_deliveries.c.attempt_id == attempt.id,
                    provider_deliveries.c.event_key.like("xendit:ewallet:%:VOIDED")))
            ).scalar_one())

    await wait_for(void_deliveries, 1)
    await settled_quietly(stack, attempt.id)
    whole = attempt.transfer_amount
    assert await review(stack, order_id) == [(*REFUNDED, whole)]
    assert await merchant_told(stack, order_id) == [("refunded_at_provider", whole, "VOIDED")]
    assert (await order_state(stack, order_id)()) == "paid"

    async with httpx.AsyncClient(verify=default_trust()) as c:
        sent = (await c.get(f"{stack.sims.xendit.control_url}/callbacks")).json()
    [void] = [s["body"] for s in sent if s["event"] == "ewallet.void"]
    token = stack.container.settings.providers.xendit_callback_token
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(void),
                                headers={"x-callback-token": token})
    assert r.status_code == 200, r.text
    await settled_quietly(stack, attempt.id)
    assert len(await review(stack, order_id)) == 1
    assert await reversal_evidence(stack, attempt.id) == [whole]



async def test_a_capture_callback_that_comes_after_the_charge_was_voided_pays_nothing(
    stack: Stack,  # noqa: F811
) -> None:
    """Regression (settled-reads review): the customer paid a DANA charge and the merchant
    voided it the same day in Xendit's dashboard; Lunas was unreachable meanwhile and
    Xendit's retries delivered the ``ewallet.void`` before the ``ewallet.capture``. The void,
    on an attempt Lunas had not seen paid, failed it; the capture that followed settled the
    order as paid from the stale charge, and the merchant was told ``order.paid`` for money
    already back in the customer's wallet (no case either, until a read a day later). A
    capture on an attempt Lunas closed is confirmed by a read first, as Midtrans's are: the
    charge says VOIDED, nothing was kept, and nothing is paid."""
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    order_id, attempt = await order_and_attempt(stack, "ewallet", "dana", "ewallet:xendit:dana")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "ewallet", "reference_id": attempt.id, "amount": attempt.transfer_amount})
    charge = stack.sims.xendit.store.charge_by_reference(attempt.id)
    assert charge is not None
    capture = {"event": "ewallet.capture", "business_id": "b", "created": charge["updated"],
               "data": copy.deepcopy(charge)}
    voided = await sim_post(stack.sims.xendit.control_url, "/void", {"reference_id": attempt.id})
    void = {"event": "ewallet.void", "business_id": "b", "created": voided["updated"],
            "data": voided}
    token = stack.container.settings.providers.xendit_callback_token
    for body in (void, capture):
        r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(body),
                                    headers={"x-callback-token": token})
        assert r.status_code == 200, r.text
        await settled_quietly(stack, attempt.id)
    await run_relay(stack.container, lambda: jobs_waiting(stack, attempt.id), 0)
    assert (await order_state(stack, order_id)()) != "paid"
    async with stack.container.db.read() as conn:
        told = (await conn.execute(sa.select(outbox.c.event_type).where(
            outbox.c.aggregate_id == order_id))).scalars().all()
        kept = (await conn.execute(sa.select(sa.func.count()).select_from(evidence).where(
            evidence.c.attempt_id == attempt.id))).scalar_one()
    assert "order.paid" not in told
    assert kept == 0
    assert await review(stack, order_id) == []


async def jobs_waiting(stack: Stack, attempt_id: str) -> int:  # noqa: F811
    async with stack.container.db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.aggregate_id == attempt_id, outbox.c.event_type == "attempt.verify",
            outbox.c.status == "pending"))).scalar_one())


async def test_a_read_older_than_a_recorded_refund_opens_no_case_for_it_again(
    stack: Stack,  # noqa: F811
) -> None:
    """Two reads of one charge race: one made after the first refund (20000 back so far)
    commits after one made after the second (50000 so far), which opened its case. A running
    total only grows, so the older one says nothing new: no case, no evidence. Nor does the
    same total under another status. Before: a case for 20000 more, 70000 recorded against the
    50000 the customer got back."""
    order_id, attempt = await paid_xendit_ewallet_order(stack)
    async with stack.container.db.read() as conn:
        paid = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.id == attempt.id))).one()

    def read(total: int, raw: str = "PARTIALLY_REFUNDED") -> ProviderStatus:
        return ProviderStatus(status=NeutralStatus.REFUNDED, provider_ref=paid.provider_ref,
                              paid_amount=paid.transfer_amount, raw_status=raw,
                              reversed_amount=total)

    opened: list[str | None] = []
    for answer in (read(50_000), read(20_000), read(50_000, "REFUNDED")):
        async with stack.container.db.transaction() as conn:
            opened.append(await apply_reversal(
                conn, paid, answer, kind="provider_status", details={"by": "test"},
                now=datetime.now(UTC), quarantine=timedelta(hours=1)))
    assert opened[0] is not None and opened[1:] == [None, None]
    assert await review(stack, order_id) == [(*REFUNDED, 50_000)]
    assert await reversal_evidence(stack, attempt.id) == [50_000]
    assert await merchant_told(stack, order_id) == [
        ("refunded_at_provider", 50_000, "PARTIALLY_REFUNDED")]


async def test_a_void_applied_while_the_payment_settles_is_applied_to_the_paid_attempt(
    stack: Stack,  # noqa: F811
) -> None:
    """The merchant voids a DANA payment moments after it was made, and the relay handles the
    ``ewallet.void`` while the payment settles. The void read the attempt still active (it
    would fail it); by the time it held the order, the payment had paid it. Applied again to
    the attempt as it is now, the void is a reversal of a payment: confirmed by a read, one
    case for all of it, the order still paid. Before: "no change: the attempt moved
    meanwhile", and the money's return reached nobody until a read a day later."""
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    order_id, attempt = await order_and_attempt(stack, "ewallet", "dana", "ewallet:xendit:dana")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "ewallet", "reference_id": attempt.id, "amount": attempt.transfer_amount})
    voided = await sim_post(stack.sims.xendit.control_url, "/void", {"reference_id": attempt.id})
    void = {"event": "ewallet.void", "business_id": "b", "created": voided["updated"],
            "data": voided}

    token = stack.container.settings.providers.xendit_callback_token
    async with stack.container.db.transaction() as hold:  # both queue behind this lock
        await hold.execute(sa.select(orders.c.id).where(orders.c.id == order_id)
                           .with_for_update())
        paying = asyncio.create_task(settle_directly(  # the capture's settlement
            stack, attempt, evidence_key=paid_evidence_key("xendit", attempt.id),
            kind="provider_webhook"))
        await wait_for(lambda: lock_waiters(stack), 1)
        r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(void),
                                    headers={"x-callback-token": token})
        assert r.status_code == 200, r.text
        closing = asyncio.create_task(settled_quietly(stack, attempt.id))
        await wait_for(lambda: lock_waiters(stack), 2)
    await paying
    await closing
    whole = attempt.transfer_amount
    assert (await order_state(stack, order_id)()) == "paid"
    assert await review(stack, order_id) == [(*REFUNDED, whole)]
    assert await merchant_told(stack, order_id) == [("refunded_at_provider", whole, "VOIDED")]


async def test_a_whole_refund_that_does_not_say_how_much_after_a_partial_one_is_for_the_rest(
    stack: Stack,  # noqa: F811
) -> None:
    """20000 of a 125000 payment went back first (its running total said so), then the rest:
    the provider says only that the payment is refunded (Midtrans ``refund``, no amount). The
    second case is for what is left, 105000, not the whole payment again (125000 more cases
    than money moved). A read saying the full total later adds nothing."""
    order_id, attempt = await paid_xendit_ewallet_order(stack)
    async with stack.container.db.read() as conn:
        paid = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.id == attempt.id))).one()
    whole = int(paid.transfer_amount)

    def read(total: int | None, raw: str) -> ProviderStatus:
        return ProviderStatus(status=NeutralStatus.REFUNDED, provider_ref=paid.provider_ref,
                              paid_amount=whole, raw_status=raw, reversed_amount=total)

    for answer in (read(20_000, "PARTIALLY_REFUNDED"), read(None, "REFUNDED"),
                   read(whole, "REFUNDED")):
        async with stack.container.db.transaction() as conn:
            await apply_reversal(conn, paid, answer, kind="provider_status",
                                 details={"by": "test"}, now=datetime.now(UTC),
                                 quarantine=timedelta(hours=1))
    assert sorted(await reversal_evidence(stack, attempt.id)) == [20_000, whole - 20_000]
    assert sorted(c[2] for c in await review(stack, order_id)) == [20_000, whole - 20_000]
