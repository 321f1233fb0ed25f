"""Reading and cancelling orders, as their merchant (and only their merchant) sees them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.errors import NotFound, TransitionRefused
from orchestrator.domain.order import (
    ORDER_EVENT_ON_ENTRY,
    AttemptState,
    OrderState,
    OrderTrigger,
    next_order_state,
    nothing_left_to_pay,
)
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import Rail
from orchestrator.services.order_view import event_payload, render_order
from orchestrator.services.payment_failed import payable_attempts
from orchestrator.store.database import Database
from orchestrator.store.tables import evidence, orders, payment_attempts

_SHOWN = (AttemptState.PAID, AttemptState.ACTIVE, AttemptState.SUPERSEDED, AttemptState.EXPIRED)


async def current_attempt(conn: AsyncConnection, order_id: str) -> Any:
    """The instrument a customer should see: the paid one, else the active one, else the latest
    that was ever live. Attempts that never gave instructions (creating, failed, unknown) are not
    shown: there is nothing on them to pay."""
    a = payment_attempts.c
    rank = sa.case((a.state == AttemptState.PAID.value, 0),
                   (a.state == AttemptState.ACTIVE.value, 1), else_=2)
    shown = sa.or_(a.state.in_([s.value for s in _SHOWN]),
                   sa.and_(a.state == AttemptState.FAILED.value, a.rail == "manual_transfer"))
    return (await conn.execute(
        sa.select(payment_attempts).where(a.order_id == order_id, shown)
        .order_by(rank, a.created_at.desc(), a.id.desc()).limit(1)
    )).first()


async def view_order(conn: AsyncConnection, order: Any) -> dict[str, Any]:
    """A stored order as its merchant sees it: the instrument shown, and whether anything is
    left to pay on, decided as the status page and ``order.payment_failed`` decide it."""
    return render_order(order, await current_attempt(conn, order.id),
                        nothing_to_pay=nothing_left_to_pay(
                            order.state, await payable_attempts(conn, order.id)))


async def get_order(db: Database, *, merchant_id: str, order_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        order = (await conn.execute(
            sa.select(orders).where(orders.c.id == order_id, orders.c.merchant_id == merchant_id)
        )).first()
        if order is None:
            # A foreign order id is reported exactly like a missing one: no probing.
            raise NotFound(f"no order {order_id} for this merchant")
        return await view_order(conn, order)


async def find_by_merchant_order_id(
    db: Database, *, merchant_id: str, merchant_order_id: str
) -> list[dict[str, Any]]:
    async with db.read() as conn:
        order = (await conn.execute(
            sa.select(orders).where(orders.c.merchant_id == merchant_id,
                                    orders.c.merchant_order_id == merchant_order_id)
        )).first()
        if order is None:
            return []
        return [await view_order(conn, order)]


async def close_attempts(
    conn: AsyncConnection, order_ids: list[str], state: AttemptState, *, now: datetime,
    quarantine: timedelta, rail: Rail | None = None,
) -> None:
    """Close the live attempts of ``order_ids`` (on ``rail`` only, if given); held amounts stay
    held for the quarantine."""
    await conn.execute(
        payment_attempts.update().where(
            payment_attempts.c.order_id.in_(order_ids),
            # Unknown and creating attempts are left for verification: money may have moved on
            # them, and only the provider can say (rule 3).
            payment_attempts.c.state.in_([AttemptState.ACTIVE.value,
                                          AttemptState.SUPERSEDED.value]),
            *([payment_attempts.c.rail == rail.value] if rail is not None else []),
        ).values(
            state=state.value, updated_at=now, closed_at=now,
            code_held_until=sa.case(
                (payment_attempts.c.holds_code, sa.literal(now + quarantine,
                                                           payment_attempts.c.code_held_until.type)),
                else_=None,
            ),
        )
    )


async def cancel_order(
    db: Database, *, merchant_id: str, order_id: str, now: datetime, quarantine: timedelta
) -> dict[str, Any]:
    async with db.transaction() as conn:
        order = (await conn.execute(
            sa.select(orders).where(orders.c.id == order_id, orders.c.merchant_id == merchant_id)
            .with_for_update()
        )).first()
        if order is None:
            raise NotFound(f"no order {order_id} for this merchant")
        has_evidence = (await conn.execute(
            sa.select(sa.func.count()).select_from(evidence).where(evidence.c.order_id == order_id)
        )).scalar_one()
        if has_evidence:
            # Money may have moved: cancelling would hide it (rule 3).
            raise TransitionRefused("order", order.state, "cancel (payment evidence exists)")
        new_state = next_order_state(OrderState(order.state), OrderTrigger.CANCEL)
        await conn.execute(orders.update().where(orders.c.id == order_id)
                           .values(state=new_state.value, updated_at=now))
        # A gateway instrument stays payable at its provider until cancelled there, and a
        # customer may have paid it a moment ago: cancel it where possible and keep reading it
        # (superseded), so money that moved on it reaches a person (rules 3 and 4).
        gateway = (await conn.execute(sa.select(payment_attempts.c.id).where(
            payment_attempts.c.order_id == order_id,
            payment_attempts.c.state.in_([AttemptState.ACTIVE.value,
                                          AttemptState.SUPERSEDED.value]),
            payment_attempts.c.rail != Rail.MANUAL_TRANSFER.value))).scalars().all()
        if gateway:
            await retire_attempts(conn, list(gateway), now=now, quarantine=quarantine)
        await close_attempts(conn, [order_id], AttemptState.FAILED, now=now, quarantine=quarantine,
                             rail=Rail.MANUAL_TRANSFER)
        moved = (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).one()
        await add_events(conn, [PendingEvent(
            event_type=ORDER_EVENT_ON_ENTRY[new_state], aggregate_id=order_id,
            merchant_id=merchant_id, payload=event_payload(moved),
        )], now=now)
        return await view_order(conn, moved)


async def retire_attempts(conn: AsyncConnection, attempt_ids: list[str], *, now: datetime,
                  quarantine: timedelta) -> None:
    """Instruments the order no longer wants: superseded (still watched for late money, rule 4),
    their codes held through the quarantine, and a cancel queued at their providers."""
    rows = (await conn.execute(sa.select(payment_attempts.c.id, payment_attempts.c.rail,
                                         payment_attempts.c.holds_code)
                               .where(payment_attempts.c.id.in_(attempt_ids)))).all()
    for r in rows:
        await conn.execute(payment_attempts.update().where(payment_attempts.c.id == r.id).values(
            state=AttemptState.SUPERSEDED.value, updated_at=now, closed_at=now,
            code_held_until=now + quarantine if r.holds_code else None))
    await add_events(conn, [
        PendingEvent(event_type=events.ATTEMPT_CANCEL_REQUESTED, aggregate_id=r.id,
                     merchant_id=None, payload={"attempt_id": r.id})
        for r in rows if r.rail != Rail.MANUAL_TRANSFER.value
    ], now=now)
