"""Deadlines: unpaid orders expire at ``expires_at``; held transfer amounts return to the pool
after their quarantine. Run by every worker; ``SKIP LOCKED`` lets several share the sweep."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from orchestrator.domain import events
from orchestrator.domain.order import AttemptState, OrderState
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.services.order_view import event_payload
from orchestrator.services.orders import close_attempts
from orchestrator.store.database import Database
from orchestrator.store.tables import orders, payment_attempts

_EXPIRABLE = (OrderState.CAPTURED.value, OrderState.AWAITING_PAYMENT.value)


async def expire_due_orders(
    db: Database, *, now: datetime, quarantine: timedelta, batch: int
) -> int:
    """Expire up to ``batch`` orders whose deadline has passed; returns how many."""
    async with db.transaction() as conn:
        due = (await conn.execute(
            sa.select(orders).where(orders.c.state.in_(_EXPIRABLE), orders.c.expires_at <= now)
            .order_by(orders.c.expires_at).limit(batch)
            .with_for_update(skip_locked=True)
        )).all()
        if not due:
            return 0
        ids = [o.id for o in due]
        await conn.execute(orders.update().where(orders.c.id.in_(ids))
                           .values(state=OrderState.EXPIRED.value, updated_at=now))
        await close_attempts(conn, ids, AttemptState.EXPIRED, now=now, quarantine=quarantine)
        await add_events(conn, [
            PendingEvent(
                event_type=events.ORDER_EXPIRED, aggregate_id=o.id, merchant_id=o.merchant_id,
                payload={**event_payload(o), "status": OrderState.EXPIRED.value},
            )
            for o in due
        ], now=now)
        return len(due)


async def release_quarantined_codes(db: Database, *, now: datetime) -> int:
    async with db.transaction() as conn:
        result = await conn.execute(
            payment_attempts.update().where(
                payment_attempts.c.holds_code, payment_attempts.c.code_held_until <= now
            ).values(holds_code=False)
        )
        return int(result.rowcount)
