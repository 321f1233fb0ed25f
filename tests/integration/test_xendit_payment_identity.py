"""Which Xendit money a callback or a status read is about, and that each payment reaches the
order or a review case exactly once (rules 2 and 4).

- A VA paid twice (Xendit did not keep it single-use, or a bank let a payment through) is two
  payments: the first pays the order, the second opens a ``second_payment`` case, whichever of
  a callback and a status read sees each first. Read as one sum, the order went to review for
  a wrong amount nobody sent; keyed once per attempt, the second was "already applied" and lost.
  A VA whose create answer is not closed and single-use is never shown, and is cancelled.
- A callback is matched to an attempt by our reference; one whose Xendit id (VA, QR, charge)
  or kind contradicts the instrument Lunas holds for that attempt moves nothing: a close only
  asks for the attempt's status read, a payment for a read by our reference (a recreated
  attempt's old charge shares its reference).

Runs the real service with both simulators (the ``stack`` of test_provider_webhooks), on the
session's PostgreSQL and Redis; the worker's relay and verifier run in-process.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa

from orchestrator.store.tables import evidence, payment_attempts, provider_deliveries
from orchestrator.tls import default_trust
from tests.integration.test_failover import Stack, sims  # noqa: F401
from tests.integration.test_provider_webhooks import (  # noqa: F401
    attempt_row,
    checks,
    make_due,
    order_and_attempt,
    order_state,
    outcomes,
    review,
    run_relay,
    run_verifier,
    scalar,
    settled_quietly,
    sim_post,
    stack,
)

SECOND = ("second_payment", "refund")


async def evidence_keys(stack: Stack, order_id: str) -> list[str]:  # noqa: F811
    async with stack.container.db.read() as conn:
        return sorted((await conn.execute(sa.select(evidence.c.unique_key).where(
            evidence.c.order_id == order_id))).scalars())


async def post_callback(stack: Stack, body: dict[str, Any]) -> None:  # noqa: F811
    r = await stack.client.post("/v1/webhooks/xendit", content=json.dumps(body), headers={
        "x-callback-token": stack.container.settings.providers.xendit_callback_token})
    assert r.status_code == 200, r.text


def unhandled(stack: Stack, attempt_id: str) -> Any:  # noqa: F811
    """Deliveries naming the attempt that are not handled yet, and reads they queued that have
    not run (a queued read's ``last_check`` starts with "status read queued")."""
    async def probe() -> object:
        waiting = await scalar(stack, sa.select(sa.func.count()).select_from(provider_deliveries)
                               .where(provider_deliveries.c.attempt_id == attempt_id,
                                      provider_deliveries.c.outcome.is_(None)))
        row = await attempt_row(stack, attempt_id)
        return (waiting, (row.last_check or "").startswith("status read queued"))
    return probe


async def test_a_va_paid_twice_and_read_once_is_two_payments_and_their_callbacks_add_nothing(
    stack: Stack,  # noqa: F811
) -> None:
    """Both payments' callbacks are lost; the verifier's read lists both. The first pays the
    order, the second opens a case for a refund. Before, their sum went to review as a
    payment of the wrong amount. The callbacks that come later are the same payments: they
    add no evidence and no case."""
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    sent = [await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": attempt.transfer_amount,
        "force": True}) for _ in range(2)]
    await make_due(stack, attempt.id)
    await run_verifier(stack.container, order_state(stack, order_id), "paid")
    assert await review(stack, order_id) == [(*SECOND, attempt.transfer_amount)]
    assert len(await evidence_keys(stack, order_id)) == 2

    for body in reversed(sent):  # the provider's retries, in any order
        await post_callback(stack, body)
    await run_relay(stack.container, unhandled(stack, attempt.id), (0, False))
    assert len(await evidence_keys(stack, order_id)) == 2
    assert await review(stack, order_id) == [(*SECOND, attempt.transfer_amount)]
    assert await order_state(stack, order_id)() == "paid"


async def test_a_second_va_payment_told_by_its_callback_opens_a_case(
    stack: Stack,  # noqa: F811
) -> None:
    """The first payment's callback pays the order. A second payment on the same VA comes with
    its own callback (another ``payment_id``): before, it was recorded "payment already
    applied" and the money reached nobody (rule 4). It asks for a status read of the paid
    attempt, which lists both payments: the second opens a case."""
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": attempt.transfer_amount})
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": attempt.transfer_amount,
        "force": True})
    await run_relay(stack.container, lambda: review(stack, order_id),
                    [(*SECOND, attempt.transfer_amount)])
    await settled_quietly(stack, attempt.id)
    assert len(await evidence_keys(stack, order_id)) == 2
    first, second = await outcomes(stack, attempt.id)
    assert first == (True, "payment applied: settle, order paid")
    assert second[1] is not None and "status read" in second[1], second


async def test_a_callback_for_another_charge_under_the_attempts_reference_moves_nothing(
    stack: Stack,  # noqa: F811
) -> None:
    """A recreated attempt (``gateway_jobs._recreate``) keeps its reference; where Xendit does
    not honour the idempotency key (e-wallet charges: RAILS.md §2.1 [?]) the old charge and the
    new one share it. The old charge's FAILED callback names the attempt by reference and
    another charge by id: before, it failed the live attempt and told the merchant its
    payment failed. It only asks for the status read, which reads the attempt's own charge."""
    order_id, attempt = await order_and_attempt(stack, "ewallet", "dana", "ewallet:xendit:dana")
    async with httpx.AsyncClient(verify=default_trust()) as c:
        found = (await c.get(f"{stack.sims.xendit.control_url}/resources",
                             params={"reference": attempt.id})).json()
    [charge] = found["ewallet_charges"]
    assert charge["id"] == attempt.provider_ref
    old = {**copy.deepcopy(charge), "id": f"ewc_{uuid.uuid4()}", "status": "FAILED",
           "failure_code": "ACCOUNT_ACCESS_BLOCKED"}
    await post_callback(stack, {"event": "ewallet.capture", "business_id": charge["business_id"],
                                "created": charge["created"], "data": old})
    await settled_quietly(stack, attempt.id)
    [(verified, outcome)] = await outcomes(stack, attempt.id)
    assert verified and outcome is not None and "status read" in outcome, outcome
    assert (await attempt_row(stack, attempt.id)).state == "active"
    read_before = (await attempt_row(stack, attempt.id)).checks
    await run_verifier(stack.container, checks(stack, attempt.id), read_before + 1)
    assert (await attempt_row(stack, attempt.id)).state == "active"
    assert await order_state(stack, order_id)() == "awaiting_payment"


async def test_a_va_payment_callback_for_another_va_never_pays_the_attempt(
    stack: Stack,  # noqa: F811
) -> None:
    """A paid callback naming our attempt by ``external_id`` but another VA by
    ``callback_virtual_account_id`` is not about the VA Lunas gave the customer: it pays
    nothing by itself. Xendit lists no payment under our reference: nothing moves."""
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    stamp = datetime.now(UTC).isoformat()
    await post_callback(stack, {
        "id": uuid.uuid4().hex[:24], "payment_id": str(uuid.uuid4()),
        "callback_virtual_account_id": uuid.uuid4().hex[:24], "external_id": attempt.id,
        "account_number": "107669999123456", "bank_code": "BCA", "merchant_code": "10766",
        "amount": attempt.transfer_amount, "transaction_timestamp": stamp, "currency": "IDR",
        "created": stamp, "updated": stamp})
    await run_relay(stack.container, read_by_reference(stack, attempt.id), True)
    [(verified, outcome)] = await outcomes(stack, attempt.id)
    assert verified and outcome == ("status read by reference: no payment under it "
                                    "(NO_PAYMENT_FOR_REFERENCE); attempt active unchanged")
    assert await evidence_keys(stack, order_id) == []
    assert (await attempt_row(stack, attempt.id)).state == "active"
    assert await order_state(stack, order_id)() == "awaiting_payment"


def read_by_reference(stack: Stack, attempt_id: str) -> Any:  # noqa: F811
    async def probe() -> bool:
        [(_, outcome)] = await outcomes(stack, attempt_id)
        return (outcome or "").startswith("status read by reference")
    return probe


async def test_a_qr_payment_callback_naming_an_e_wallet_attempt_pays_nothing(
    stack: Stack,  # noqa: F811
) -> None:
    """A QR payment and an e-wallet charge mixed up under one reference: a callback of another
    rail than the attempt's is not about its instrument. Xendit lists no payment under our
    reference: nothing moves."""
    order_id, attempt = await order_and_attempt(stack, "ewallet", "dana", "ewallet:xendit:dana")
    await post_callback(stack, {
        "event": "qr.payment", "id": f"qrpy_{uuid.uuid4()}", "amount": attempt.transfer_amount,
        "created": datetime.now(UTC).isoformat(), "status": "COMPLETED",
        "qr_code": {"id": f"qr_{uuid.uuid4()}", "external_id": attempt.id,
                    "qr_string": "000201", "type": "DYNAMIC"}})
    await run_relay(stack.container, read_by_reference(stack, attempt.id), True)
    assert await evidence_keys(stack, order_id) == []
    assert (await attempt_row(stack, attempt.id)).state == "active"
    assert await order_state(stack, order_id)() == "awaiting_payment"


async def test_a_payment_on_the_old_charge_of_a_recreated_attempt_still_reaches_the_order(
    stack: Stack,  # noqa: F811
) -> None:
    """Rule 4 for the same mix-up: the customer paid the old charge (OVO pushes a prompt the
    moment a charge exists), whose id is not the attempt's. Its callback moves nothing by
    itself, and the read of the attempt's own charge would not see that money; the read by
    our reference lists it, and it pays the order, once."""
    order_id, attempt = await order_and_attempt(stack, "ewallet", "dana", "ewallet:xendit:dana")
    async with httpx.AsyncClient(verify=default_trust()) as c:
        found = (await c.get(f"{stack.sims.xendit.control_url}/resources",
                             params={"reference": attempt.id})).json()
    [charge] = found["ewallet_charges"]
    old_id = f"ewc_{uuid.uuid4()}"
    stack.sims.xendit._record_payment(  # the old charge's payment, as Xendit lists it
        product_id=old_id, reference_id=attempt.id, category="EWALLET",
        channel_code="ID_DANA", amount=attempt.transfer_amount, account=None)
    old = {**copy.deepcopy(charge), "id": old_id, "status": "SUCCEEDED"}
    await post_callback(stack, {"event": "ewallet.capture", "business_id": charge["business_id"],
                                "created": charge["created"], "data": old})
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    await settled_quietly(stack, attempt.id)
    [(verified, outcome)] = await outcomes(stack, attempt.id)
    assert verified and outcome == (
        "status read by reference: payment applied: settle, order paid"), outcome
    assert len(await evidence_keys(stack, order_id)) == 1


async def test_a_va_xendit_would_not_close_is_never_shown_and_is_cancelled(
    stack: Stack,  # noqa: F811
) -> None:
    """Xendit answers the create with an open, multi-use VA (``va_reusable``): any number of
    payments of any amount could reach it. The checkout fails over (the customer never sees
    it); verification finds the VA by repeating the create, which answers the same, and
    cancels it, watching it as any live orphan. Before, the adapter never looked."""
    await sim_post(stack.sims.xendit.control_url, "/config", {"va_reusable": True})
    try:
        r = await stack.capture("va", "bca")
    finally:
        await sim_post(stack.sims.xendit.control_url, "/config", {"va_reusable": False})
    assert r.status_code == 201, r.text
    assert r.json()["routing"]["served_by"] == "va:midtrans:bca"
    async with stack.container.db.read() as conn:
        [orphan] = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == r.json()["id"],
            payment_attempts.c.provider == "xendit"))).all()
    assert orphan.state == "unknown"

    async def state() -> object:
        return (await attempt_row(stack, orphan.id)).state
    await run_relay(stack.container, state, "superseded")
    async with httpx.AsyncClient(verify=default_trust()) as c:
        found = (await c.get(f"{stack.sims.xendit.control_url}/resources",
                             params={"reference": orphan.id})).json()
    [va] = found["virtual_accounts"]
    assert (await attempt_row(stack, orphan.id)).provider_ref == va["id"]
    assert va["status"] == "INACTIVE" and not va["is_single_use"]  # cancelled at Xendit


async def test_a_va_paid_twice_whose_later_callback_comes_first_loses_neither_payment(
    stack: Stack,  # noqa: F811
) -> None:
    """A VA Xendit let be paid twice: the exact amount, then 10,000 more. Their callbacks
    arrive the other way round. The 10,000 one pays as the first payment (a wrong amount: the
    order goes to review); the exact one finds a payment recorded and asks for a read, which
    lists both, oldest first. Counted by place in that list, the exact payment took the first
    place the 10,000 one holds (skipped as "already applied") and the 10,000 one was applied a
    second time: the exact payment reached nobody and the order stayed in review."""
    order_id, attempt = await order_and_attempt(stack, "va", "bca", "va:xendit:bca")
    await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
    exact = await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": attempt.transfer_amount})
    more = await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "va", "external_id": attempt.id, "amount": 10_000, "force": True})

    await post_callback(stack, more)
    await run_relay(stack.container, order_state(stack, order_id), "needs_review")
    await post_callback(stack, exact)
    await run_relay(stack.container, unhandled(stack, attempt.id), (0, False))

    async with stack.container.db.read() as conn:
        amounts = sorted((await conn.execute(sa.select(evidence.c.amount).where(
            evidence.c.order_id == order_id))).scalars())
    assert amounts == sorted([10_000, attempt.transfer_amount])
    assert await order_state(stack, order_id)() == "paid"  # the exact payment pays it
    assert await review(stack, order_id) == [("amount_mismatch", "refund", 10_000)]
