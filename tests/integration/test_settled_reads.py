"""A paid attempt is read again after its payment, so a refund or chargeback whose notification
was lost still reaches a person and the merchant.

Each paid QRIS, e-wallet or VA attempt is read on the configured gaps after its payment (here
0.2 s each, two reads): a reversal found opens one review case, the order stays paid, and the
reads end after the last gap. A read the route's breaker refuses waits for the route's
recovery, never fails. The simulators drop the reversal's notification (Xendit refunds without
a callback; Midtrans answers ``chargeback`` and notifies nobody).

Runs the real service with both simulators (the ``stack`` of test_provider_webhooks), on the
session's PostgreSQL and Redis; the worker's relay runs in-process, only when a test runs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from chaos.sim.runner import Simulators
from orchestrator.bootstrap import Container
from orchestrator.settings import Settings
from orchestrator.store.tables import outbox, payment_attempts, provider_deliveries
from orchestrator.tls import default_trust
from tests.integration.test_failover import Stack, sims  # noqa: F401
from tests.integration.test_provider_webhooks import (
    attempt_row,
    order_and_attempt,
    order_state,
    relay_for,
    review,
    run_relay,
    scalar,
    serving_stack,
    sim_post,
)
from tests.support import new_ops_token

GAPS = (timedelta(seconds=0.2), timedelta(seconds=0.2))


def read_paid_attempts_quickly(s: Settings) -> Settings:
    return replace(s, verification=replace(s.verification, schedule=replace(
        s.verification.schedule, settled_reads=GAPS)))


@pytest.fixture
async def stack(container: Container, sims: Simulators) -> AsyncIterator[Stack]:  # noqa: F811
    async with serving_stack(container, sims, read_paid_attempts_quickly) as served:
        yield served


async def paid_dana_order(stack: Stack) -> tuple[str, Any]:
    """A DANA order paid through Xendit, its capture callback applied."""
    order_id, attempt = await order_and_attempt(stack, "ewallet", "dana", "ewallet:xendit:dana")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "ewallet", "reference_id": attempt.id, "amount": attempt.transfer_amount})
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    return order_id, attempt


async def refunded_silently_at_xendit(stack: Stack) -> tuple[str, Any, str, int]:
    """Paid, then 20000 refunded in Xendit's dashboard with no callback: (order, attempt,
    provider, what the case should ask about)."""
    order_id, attempt = await paid_dana_order(stack)
    await sim_post(stack.sims.xendit.control_url, "/refund", {
        "reference_id": attempt.id, "amount": 20_000, "notify": False})
    return order_id, attempt, "xendit", 20_000


async def charged_back_silently_at_midtrans(stack: Stack) -> tuple[str, Any, str, int]:
    """A QRIS payment settled, then pulled back by the customer's bank; Midtrans's
    ``chargeback`` notification never comes."""
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await sim_post(stack.sims.midtrans.control_url, "/pay", {"order_id": attempt.id})
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    await sim_post(stack.sims.midtrans.control_url, "/config", {"drop_notifications": True})
    await sim_post(stack.sims.midtrans.control_url, "/answer", {
        "order_id": attempt.id, "fields": {"transaction_status": "chargeback"}})
    return order_id, attempt, "midtrans", attempt.transfer_amount


async def voided_silently_at_xendit(stack: Stack) -> tuple[str, Any, str, int]:
    """Paid, then voided the same day from Xendit's dashboard (the whole payment back to the
    customer's wallet), and the void's notification never reached Lunas. Xendit says the
    charge is ``VOIDED``: for a charge never paid, a failure; for this one, a reversal."""
    order_id, attempt = await paid_dana_order(stack)
    charge = stack.sims.xendit.store.charge_by_reference(attempt.id)
    assert charge is not None
    stack.sims.xendit.void_charge(charge["id"])
    return order_id, attempt, "xendit", attempt.transfer_amount


def last_check(stack: Stack, attempt_id: str) -> Callable[[], Awaitable[object]]:
    async def read() -> object:
        return (await attempt_row(stack, attempt_id)).last_check
    return read


async def run_relay_until_read(stack: Stack, attempt_id: str, prefix: str,
                               timeout: float = 10.0) -> str:
    """The worker's relay until the attempt's ``last_check`` starts with ``prefix``."""
    async def reached() -> bool:
        return str(await last_check(stack, attempt_id)()).startswith(prefix)
    await run_relay(stack.container, reached, True, timeout=timeout)
    return str(await last_check(stack, attempt_id)())


async def reads_queued(stack: Stack, attempt_id: str, status: str) -> int:
    return int(await scalar(stack, sa.select(sa.func.count()).select_from(outbox).where(
        outbox.c.event_type == "attempt.settled_read", outbox.c.aggregate_id == attempt_id,
        outbox.c.status == status)))


async def cases_told(stack: Stack, order_id: str) -> list[tuple[str, int]]:
    async with stack.container.db.read() as conn:
        return [(p["reason"], p["amount"]) for p in (await conn.execute(
            sa.select(outbox.c.payload).where(outbox.c.aggregate_id == order_id,
                                              outbox.c.event_type == "review_case.opened")
        )).scalars()]


@pytest.mark.parametrize("reversed_silently", [refunded_silently_at_xendit,
                                               voided_silently_at_xendit,
                                               charged_back_silently_at_midtrans],
                         ids=["xendit-ewallet-refund", "xendit-ewallet-void",
                              "midtrans-qris-chargeback"])
async def test_a_reversal_whose_notification_was_lost_is_found_by_the_next_read_once(
    stack: Stack,
    reversed_silently: Callable[[Stack], Awaitable[tuple[str, Any, str, int]]],
) -> None:
    """The first read after the payment finds the reversal: one review case, the merchant told
    once, the order still paid. The second (the last) finds it recorded and opens nothing;
    after it, the attempt is read no more. Before: nothing read a paid attempt again, and
    Lunas said for ever that the money was with the merchant."""
    order_id, attempt, provider, amount = await reversed_silently(stack)
    before = await stack.calls(provider, "status")
    found = await run_relay_until_read(stack, attempt.id, "settled read 1: ")
    assert "review case" in found, found
    reason = "refunded_at_provider" if provider == "xendit" else "chargeback"
    [case] = await review(stack, order_id)
    assert (case[0], case[2]) == (reason, amount)
    assert await cases_told(stack, order_id) == [(reason, amount)]
    assert await order_state(stack, order_id)() == "paid"

    last = await run_relay_until_read(stack, attempt.id, "settled read 2: ")
    assert last.endswith("recorded; the last"), last
    assert len(await review(stack, order_id)) == 1
    assert await cases_told(stack, order_id) == [(reason, amount)]
    assert await order_state(stack, order_id)() == "paid"
    assert (await attempt_row(stack, attempt.id)).state == "paid"
    assert await stack.calls(provider, "status") - before == 2
    await relay_for(stack.container, 1.0)  # well past another gap: nothing more is read
    assert await stack.calls(provider, "status") - before == 2
    assert await reads_queued(stack, attempt.id, "pending") == 0
    assert await scalar(stack, sa.select(sa.func.count()).select_from(provider_deliveries)
                        .where(provider_deliveries.c.attempt_id == attempt.id,
                               provider_deliveries.c.event_key.like("%refund%"))) == 0


async def test_a_read_the_breaker_refuses_waits_for_the_route_and_happens_after_recovery(
    stack: Stack,
) -> None:
    """Xendit's e-wallet route is held open by ops while the read comes due: the read is not
    sent, not failed, not dead-lettered, and queued again; once the route is released it is
    made, and the refund's case opens."""
    order_id, attempt, provider, amount = await refunded_silently_at_xendit(stack)
    ops = {"Authorization": f"Bearer {await new_ops_token(stack.container)}"}
    route = "/v1/ops/routes/ewallet:xendit:dana/breaker"
    r = await stack.client.post(route, headers=ops,
                                json={"action": "force_open", "reason": "xendit incident"})
    assert r.status_code == 200, r.text
    before = await stack.calls(provider, "status")
    note = await run_relay_until_read(stack, attempt.id, "settled read 1: deferred")
    assert note.startswith("settled read 1: deferred, again in "), note
    assert await stack.calls(provider, "status") == before
    assert await review(stack, order_id) == []
    assert await reads_queued(stack, attempt.id, "dead") == 0
    assert await reads_queued(stack, attempt.id, "pending") == 1

    r = await stack.client.post(route, headers=ops, json={"action": "release", "reason": "ok"})
    assert r.status_code == 200, r.text
    found = await run_relay_until_read(stack, attempt.id, "settled read 1: PARTIALLY_REFUNDED")
    assert "review case" in found, found
    assert [(c[0], c[2]) for c in await review(stack, order_id)] == [
        ("refunded_at_provider", amount)]
    assert await stack.calls(provider, "status") - before == 1
    assert await reads_queued(stack, attempt.id, "dead") == 0


async def test_a_paid_attempt_with_nothing_reversed_is_read_on_each_gap_then_left_alone(
    stack: Stack,
) -> None:
    order_id, attempt = await paid_dana_order(stack)
    before = await stack.calls("xendit", "status")
    assert await run_relay_until_read(stack, attempt.id, "settled read 2: ") == (
        "settled read 2: SUCCEEDED: no change; the last")
    await relay_for(stack.container, 1.0)
    assert await stack.calls("xendit", "status") - before == 2
    assert await reads_queued(stack, attempt.id, "pending") == 0
    assert await reads_queued(stack, attempt.id, "done") == 2
    assert await review(stack, order_id) == []
    assert await order_state(stack, order_id)() == "paid"




SETTLED = "lunas_settled_reads_total"


def sample(exposition: bytes, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition, or None when the series is not there at all
    (``tests.support.metric_value`` says 0 for both)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in exposition.decode().splitlines():
        if line.startswith(name + "{"):
            inside, value = line[len(name) + 1:].rsplit("} ", 1)
            if set(inside.split(",")) == wanted:
                return float(value)
    return None


async def test_a_provider_that_no_longer_says_paid_is_counted_for_a_person_and_moves_nothing(
    stack: Stack,
) -> None:
    """Midtrans, read again after a QRIS payment it confirmed, answers that the charge expired.
    Nothing moves (no edge leaves paid; no case, for nothing says money went back), the attempt
    says what the read found, and the read is counted as ``contradicts`` on a series that was
    there at 0 before it: LunasSettledReadContradicts takes its increase, which a series
    first scraped at 1 (the process's first contradiction) would never show."""
    before = (await stack.client.get("/metrics")).content
    assert sample(before, SETTLED, provider="midtrans", outcome="contradicts") == 0
    assert sample(before, SETTLED, provider="xendit", outcome="contradicts") == 0
    order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:midtrans:qris")
    await sim_post(stack.sims.midtrans.control_url, "/pay", {"order_id": attempt.id})
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    await sim_post(stack.sims.midtrans.control_url, "/answer", {
        "order_id": attempt.id,
        "fields": {"transaction_status": "expire", "status_code": "407"}})

    found = await run_relay_until_read(stack, attempt.id, "settled read 1: ")
    assert found.startswith("settled read 1: expire for a paid attempt: nothing moved; next "), (
        found)
    assert await order_state(stack, order_id)() == "paid"
    assert (await attempt_row(stack, attempt.id)).state == "paid"
    assert await review(stack, order_id) == []
    assert await cases_told(stack, order_id) == []
    after = (await stack.client.get("/metrics")).content
    assert sample(after, SETTLED, provider="midtrans", outcome="contradicts") == 1
    assert await reads_queued(stack, attempt.id, "pending") == 1  # the last read still comes


async def test_a_refund_of_a_payment_whose_create_answer_was_lost_reaches_a_person(
    stack: Stack,
) -> None:
    """Regression (settled-reads review): an OVO charge was made at Xendit but its create's
    answer was lost (the attempt ``unknown``, with no ``provider_ref``), the prompt on the
    customer's phone was paid, and its capture callback settled the order. The merchant then
    refunded 20000 at Xendit. The refund callback names the charge by its ``ewc_`` id, which
    no attempt carried, so it was ignored; the reads of the paid attempt looked it up by
    reference in the Transactions API, whose payment stays ``SUCCESS``, and said "no change".
    The refund reached nobody. The payment's evidence names the charge: the attempt keeps
    it, so the callback finds its attempt and the reads read the charge."""
    await stack.fault("xendit", kind="timeout_after_success", operation="create")
    r = await stack.capture("ewallet", "ovo")
    assert r.status_code == 201, r.text
    order_id = r.json()["id"]
    [orphan] = [a for a in await attempts_of(stack, order_id) if a.provider == "xendit"]
    assert (orphan.state, orphan.provider_ref) == ("unknown", None)
    async with httpx.AsyncClient(verify=default_trust()) as c:
        await c.delete(f"{stack.sims.xendit.control_url}/faults")
    await sim_post(stack.sims.xendit.control_url, "/pay", {
        "kind": "ewallet", "reference_id": orphan.id, "amount": orphan.transfer_amount})
    await run_relay(stack.container, order_state(stack, order_id), "paid")
    assert (await attempt_row(stack, orphan.id)).state == "paid"

    await sim_post(stack.sims.xendit.control_url, "/refund", {
        "reference_id": orphan.id, "amount": 20_000, "notify": True})
    await run_relay_until_read(stack, orphan.id, "settled read 1: ")
    assert [(c[0], c[2]) for c in await review(stack, order_id)] == [
        ("refunded_at_provider", 20_000)]
    assert await cases_told(stack, order_id) == [("refunded_at_provider", 20_000)]
    assert await order_state(stack, order_id)() == "paid"


async def attempts_of(stack: Stack, order_id: str) -> list[Any]:
    async with stack.container.db.read() as conn:
        return list((await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == order_id))).all())



async def test_a_second_qr_payment_whose_callback_was_lost_is_found_by_a_settled_read(
    stack: Stack,
) -> None:
    """A Xendit QR paid twice (Xendit did not close it after the first); the second payment's
    callback never came. A settled read lists both payments, each evidence of its own: read as
    "no change", the second reached nobody (rule 4)."""
    ops = {"Authorization": f"Bearer {await new_ops_token(stack.container)}"}
    callbacks = stack.sims.xendit.callback_url
    r = await stack.client.post("/v1/ops/routes/qris:midtrans:qris/pause", headers=ops,
                                json={"reason": "test: serve QRIS by Xendit"})
    assert r.status_code == 200, r.text
    try:
        order_id, attempt = await order_and_attempt(stack, "qris", None, "qris:xendit:qris")
        await sim_post(stack.sims.xendit.control_url, "/pay", {
            "kind": "qr", "external_id": attempt.id, "amount": attempt.transfer_amount})
        await run_relay(stack.container, order_state(stack, order_id), "paid")
        await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": None})
        stack.sims.xendit.store.qrs[attempt.id]["callback_url"] = None  # the callback is lost
        await sim_post(stack.sims.xendit.control_url, "/pay", {
            "kind": "qr", "external_id": attempt.id, "amount": attempt.transfer_amount,
            "force": True})
        await run_relay_until_read(stack, attempt.id, "settled read 2: ")
        assert await review(stack, order_id) == [
            ("second_payment", "refund", attempt.transfer_amount)]
        assert await order_state(stack, order_id)() == "paid"
    finally:  # the stack is the module's: later tests route QRIS to Midtrans, with callbacks
        await sim_post(stack.sims.xendit.control_url, "/config", {"callback_url": callbacks})
        r = await stack.client.post("/v1/ops/routes/qris:midtrans:qris/resume", headers=ops,
                                    json={"reason": "test over"})
        assert r.status_code == 200, r.text
