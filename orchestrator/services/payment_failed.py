"""An open order left with nothing to pay on: its merchant is told, and the order says so.

A gateway instrument can close before the order's deadline: the customer declined the e-wallet
charge, the provider cancelled or expired the VA or QR early, or says it never had the
transaction. When that was the order's last instrument that could still take money (active,
superseded but not cancelled yet, or unknown or being created, which may yet turn out live),
nothing is left for the customer to pay on and nothing is being checked, while the order still
reads ``awaiting_payment``. The order keeps that state until its deadline: the customer may try
again (``POST /v1/orders/{id}/payment`` issues a new instrument). What changes is that nobody is
left guessing: the merchant gets ``order.payment_failed`` (its checkout can offer another
method), the order's ``verification.state`` reads ``payment_failed``, and so does the status
page's lookup: all three decide it by ``domain.order.nothing_left_to_pay``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.order import LIVE_ATTEMPT_STATES, OrderState, nothing_left_to_pay
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.services.order_view import event_payload
from orchestrator.store.tables import orders, payment_attempts

PAYABLE = tuple(sorted(s.value for s in LIVE_ATTEMPT_STATES))
"""Attempts a customer may still pay on (a superseded QR the provider would not cancel still
takes money), or that may yet turn out to be such an instrument: every attempt not closed."""


async def payable_attempts(conn: AsyncConnection, order_id: str) -> int:
    """How many of the order's attempts are payable (``nothing_left_to_pay`` decides)."""
    a = payment_attempts.c
    return int((await conn.execute(sa.select(sa.func.count()).where(
        a.order_id == order_id, a.state.in_(PAYABLE)))).scalar_one())


_a = payment_attempts.c
# Built once, executed with parameters, as settlement's own lock of the same row.
_LOCK_ORDER_OF_ATTEMPT = sa.select(orders).where(orders.c.id == sa.select(_a.order_id).where(
    _a.id == sa.bindparam("attempt_id")).scalar_subquery()).with_for_update()


async def lock_order_of(conn: AsyncConnection, attempt_id: str) -> Any:
    """Lock the order of ``attempt_id`` and return its row (None if there is no such attempt):
    call it before the UPDATE that closes the attempt, so the locks are taken as settlement
    takes them (order, then attempt); the other way round, a close and a payment on another
    attempt of the order deadlocked (final review; tests/integration/test_provider_webhooks.py
    ``test_a_close_and_a_payment_on_two_attempts_of_one_order_never_deadlock``). The row is
    current for as long as the lock is held: pass it to ``tell_if_nothing_left_to_pay``."""
    return (await conn.execute(_LOCK_ORDER_OF_ATTEMPT, {"attempt_id": attempt_id})).first()


async def tell_if_nothing_left_to_pay(conn: AsyncConnection, order: Any, *, attempt_id: str,
                                      reason: str, now: datetime) -> bool:
    """Call in the transaction that closed ``attempt_id``, with the order row
    ``lock_order_of`` locked before the close (no second lock, no second read). Tells the
    merchant, once per failed instrument, when the order is open before its deadline and none of
    its attempts is payable.

    With the order locked, of two transactions closing an order's last two instruments at once
    the later sees both closed and tells; the earlier still sees the other payable."""
    if order is None or order.state != OrderState.AWAITING_PAYMENT.value \
            or order.expires_at <= now:
        return False
    if not nothing_left_to_pay(order.state, await payable_attempts(conn, order.id)):
        return False
    await add_events(conn, [PendingEvent(
        event_type=events.ORDER_PAYMENT_FAILED, aggregate_id=order.id,
        merchant_id=order.merchant_id,
        payload=event_payload(order, attempt_id=attempt_id, failure_reason=reason))], now=now)
    return True
