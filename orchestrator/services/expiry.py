"""Deadlines: unpaid orders expire at ``expires_at``; held transfer amounts return to the pool
after their quarantine. Run by every worker; ``SKIP LOCKED`` lets several share the sweep."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.order import AttemptState, OrderState, ReviewReason
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import Rail
from orchestrator.services.order_view import event_payload
from orchestrator.services.orders import close_attempts
from orchestrator.store.database import Database
from orchestrator.store.tables import orders, payment_attempts

_EXPIRABLE = (OrderState.CAPTURED.value, OrderState.AWAITING_PAYMENT.value)


_UNVERIFIED = (AttemptState.UNKNOWN.value, AttemptState.CREATING.value)


async def expire_due_orders(
    db: Database, *, now: datetime, quarantine: timedelta, batch: int
) -> int:
    """Handle up to ``batch`` orders whose deadline has passed; returns how many.

    An order with an attempt whose create outcome is still unknown may have been paid on it, so
    it is not expired blind (rule 3): it goes to ``verifying`` until that attempt is resolved.
    """
    async with db.transaction() as conn:
        due = (await conn.execute(
            sa.select(orders).where(orders.c.state.in_(_EXPIRABLE), orders.c.expires_at <= now)
            .order_by(orders.c.expires_at).limit(batch)
            .with_for_update(skip_locked=True)
        )).all()
        if not due:
            return 0
        unverified = await _orders_with_unverified_attempts(conn, [o.id for o in due])
        waiting = [o for o in due if o.id in unverified]
        if waiting:
            await conn.execute(orders.update().where(orders.c.id.in_([o.id for o in waiting]))
                               .values(state=OrderState.VERIFYING.value, updated_at=now))
        await _expire(conn, [o for o in due if o.id not in unverified], now=now,
                      quarantine=quarantine)
        return len(due)


async def settle_verifying_orders(
    db: Database, *, now: datetime, quarantine: timedelta, window: timedelta, batch: int
) -> int:
    """Orders in ``verifying``: expire those whose attempts are all resolved now; send those
    still unverifiable after ``window`` past their deadline to a person (rule 6)."""
    async with db.transaction() as conn:
        waiting = (await conn.execute(
            sa.select(orders).where(orders.c.state == OrderState.VERIFYING.value)
            .order_by(orders.c.expires_at).limit(batch).with_for_update(skip_locked=True)
        )).all()
        if not waiting:
            return 0
        unverified = await _orders_with_unverified_attempts(conn, [o.id for o in waiting])
        await _expire(conn, [o for o in waiting if o.id not in unverified], now=now,
                      quarantine=quarantine)
        overdue = [o for o in waiting if o.id in unverified and o.expires_at + window <= now]
        for o in overdue:
            await conn.execute(orders.update().where(orders.c.id == o.id).values(
                state=OrderState.NEEDS_REVIEW.value, updated_at=now,
                review_reason=ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value))
        await add_events(conn, [PendingEvent(
            event_type=events.ORDER_NEEDS_REVIEW, aggregate_id=o.id, merchant_id=o.merchant_id,
            payload={**event_payload(o), "status": OrderState.NEEDS_REVIEW.value,
                     "review_reason": ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value},
        ) for o in overdue], now=now)
        return len(waiting) - len(unverified) + len(overdue)


async def _orders_with_unverified_attempts(conn: AsyncConnection, ids: list[str]) -> set[str]:
    rows = await conn.execute(sa.select(payment_attempts.c.order_id).where(
        payment_attempts.c.order_id.in_(ids), payment_attempts.c.state.in_(_UNVERIFIED)))
    return {r.order_id for r in rows}


async def _expire(conn: AsyncConnection, due: list[Any], *, now: datetime,
                  quarantine: timedelta) -> None:
    if not due:
        return
    ids = [o.id for o in due]
    live_gateway = (await conn.execute(sa.select(payment_attempts.c.id).where(
        payment_attempts.c.order_id.in_(ids),
        payment_attempts.c.state.in_([AttemptState.ACTIVE.value, AttemptState.SUPERSEDED.value]),
        payment_attempts.c.rail != Rail.MANUAL_TRANSFER.value))).scalars().all()
    await conn.execute(orders.update().where(orders.c.id.in_(ids))
                       .values(state=OrderState.EXPIRED.value, updated_at=now))
    await close_attempts(conn, ids, AttemptState.EXPIRED, now=now, quarantine=quarantine)
    await add_events(conn, [
        PendingEvent(
            event_type=events.ORDER_EXPIRED, aggregate_id=o.id, merchant_id=o.merchant_id,
            payload={**event_payload(o), "status": OrderState.EXPIRED.value},
        )
        for o in due
    ] + [  # a VA or QR left live at the provider could still be paid: cancel where possible
        PendingEvent(event_type=events.ATTEMPT_CANCEL_REQUESTED, aggregate_id=a,
                     merchant_id=None, payload={"attempt_id": a})
        for a in live_gateway
    ], now=now)


async def release_quarantined_codes(db: Database, *, now: datetime) -> int:
    async with db.transaction() as conn:
        result = await conn.execute(
            payment_attempts.update().where(
                payment_attempts.c.holds_code, payment_attempts.c.code_held_until <= now
            ).values(holds_code=False)
        )
        return int(result.rowcount)
