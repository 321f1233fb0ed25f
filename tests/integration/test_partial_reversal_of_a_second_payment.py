"""A second payment refunded only in part at the provider still reaches a person.

A reversal read on an attempt Lunas never saw paid proves the payment too; judged as money that
went back (``reversed_since``), a second payment on an order paid otherwise opens no case of its
own. That holds when all of it went back. Xendit (``refunded_amount`` on a ``SUCCEEDED`` charge)
and Midtrans (``partial_refund``) also report partial refunds, whose rest the merchant still
holds: that rest is a second payment a person must refund.

Runs on the session's PostgreSQL with the simulators (the ``stack`` of test_provider_webhooks).
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from orchestrator.rails.base import NeutralStatus, ProviderStatus
from orchestrator.services.reversals import apply_reversal
from orchestrator.services.settlement import Payment, apply_payment
from orchestrator.store.tables import payment_attempts
from tests.integration.test_failover import Stack, sims  # noqa: F401
from tests.integration.test_provider_webhooks import (  # noqa: F401
    order_state,
    review,
    stack,
    superseded_midtrans_attempt,
)


async def test_a_second_payment_refunded_in_part_keeps_a_case_for_the_rest(
    stack: Stack,  # noqa: F811
) -> None:
    """The customer paid the order's VA, and also the old QR, whose notification was lost; the
    merchant then refunded 20000 of the QR payment at the provider. The read of the QR says
    refunded in part: paid, 20000 of it back. Two cases: the refund (20000, check at source)
    and the second payment, whose rest is still with the merchant (check at source what is left
    to refund). Before: only the refund's case opened, and the rest of a double payment
    reached nobody."""
    order_id, qr = await superseded_midtrans_attempt(stack)
    async with stack.container.db.read() as conn:
        va = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == order_id,
            payment_attempts.c.state == "active"))).one()
    now = stack.container.clock.now()
    quarantine = timedelta(hours=1)
    async with stack.container.db.transaction() as conn:
        await apply_payment(conn, Payment(
            attempt_id=va.id, amount=va.transfer_amount, evidence_key=f"test:{va.id}",
            kind="provider_webhook", observed_at=now, details={}), now=now,
            quarantine=quarantine)
    refunded = ProviderStatus(status=NeutralStatus.REFUNDED, provider_ref=None,
                              paid_amount=qr.transfer_amount, reversed_amount=20_000,
                              raw_status="partial_refund")
    async with stack.container.db.transaction() as conn:
        assert await apply_reversal(conn, qr, refunded, kind="provider_status", details={},
                                    now=now, quarantine=quarantine) is not None
    assert (await order_state(stack, order_id)()) == "paid"
    assert sorted(await review(stack, order_id)) == [
        ("refunded_at_provider", "check_at_source", 20_000),
        ("second_payment", "check_at_source", qr.transfer_amount)]
