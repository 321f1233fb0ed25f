"""Review cases: money a person must decide about, resolved through the API or CLI, audited.

Honouring a case on an order in ``needs_review`` makes it ``paid``; refunding makes it
``refunded`` (the money goes back outside Lunas; the case records who decided and why). A case on
an order that is already settled (a second payment on a paid order, a payment on a cancelled one)
changes no order state: the resolution records what was done with the money.

Each open case is answered only in ways that mean something for it (``case_actions``): money
that can only go back (a second payment, a payment on a cancelled or refunded order, a refund
made at the provider, a wrong amount left beside the exact payment that paid its order) is
never honoured. Two payments an order waits in review for with one
reason (two reported in another currency) each decide it: honouring one pays the order by that
one (the case says its amount), and the other stays open beside the paid order; refunding one
leaves the order in review for the other, so it is never refunded while a payment may pay it.

A ``verification_window_exhausted`` case asks whether the order was paid at all, so it has a third
answer: ``expire`` (the source shows no payment). When a case leaves its order expired, paid or
refunded, the order's instruments still active are retired: cancelled at their providers where
possible, still read by the verifier and watched through the code quarantine, so money arriving
on them later still reaches a person.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.errors import Conflict, InvalidRequest, NotFound
from orchestrator.domain.money import RUPIAH
from orchestrator.domain.order import (
    EXPIRE,
    ORDER_EVENT_ON_ENTRY,
    AttemptState,
    OrderState,
    OrderTrigger,
    RecommendedAction,
    case_actions,
    case_decides_order,
    next_order_state,
)
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.reconciliation.matcher import DECIDED_IN_CASE, FOR_PEOPLE
from orchestrator.services.audit import record_audit
from orchestrator.services.order_view import event_payload, iso
from orchestrator.services.orders import retire_attempts
from orchestrator.store import keyset
from orchestrator.store.database import Database
from orchestrator.store.tables import mutations, orders, payment_attempts, review_cases

STATES = ("open", "resolved")
"""What a case's ``state`` can be; a list filters by one, or by none for every case."""
_ACTIONS = {RecommendedAction.HONOUR.value: OrderTrigger.REVIEW_HONOURED,
            RecommendedAction.REFUND.value: OrderTrigger.REVIEW_REFUNDED,
            EXPIRE: OrderTrigger.REVIEW_EXPIRED}


class CaseClosed(Conflict):
    code = "case_already_resolved"


class ActionNotAllowed(InvalidRequest):
    """An answer that means nothing for this case (``case_actions``), e.g. honour on money
    that can only go back."""

    code = "action_not_allowed"


def allowed_actions(c: Any, order_state: str | None, review_reason: str | None) -> list[str]:
    """What a person may answer case ``c`` with now (none once it is resolved)."""
    if c.state != "open":
        return []
    return list(case_actions(c.reason, order_state=order_state, review_reason=review_reason,
                             decides_order=(order_state is not None and case_decides_order(
                                 c.reason, order_state=order_state,
                                 review_reason=review_reason))))


def render_case(c: Any, *, allowed: list[str]) -> dict[str, Any]:
    return {"id": c.id, "order_id": c.order_id, "mutation_id": c.mutation_id,
            "reason": c.reason, "recommended_action": c.recommended_action, "amount": c.amount,
            # null only on a currency_mismatch case from before the currency was recorded
            "currency": c.currency,
            "state": c.state, "created_at": iso(c.created_at), "resolved_at": iso(c.resolved_at),
            "resolved_by": c.resolved_by, "resolution": c.resolution, "note": c.note,
            "allowed_actions": allowed}


async def list_cases(db: Database, *, state: str | None, limit: int,
                     order_id: str | None = None, after: str | None = None
                     ) -> list[dict[str, Any]]:
    """Cases oldest first. ``after`` is the id of the last case of the previous page: the
    next page starts behind it (by creation time, then id), so a queue of more cases than one
    page holds can be read to its end."""
    if state is not None and state not in STATES:
        # A filter no case can match would list nothing, as if the queue were empty.
        raise InvalidRequest(f"state must be one of: {', '.join(STATES)} (or none for every "
                             f"case)", field="state")
    rc = review_cases.c
    async with db.read() as conn:
        query = (sa.select(review_cases, orders.c.state.label("order_state"),
                           orders.c.review_reason.label("order_review_reason"))
                 .select_from(review_cases.outerjoin(orders, orders.c.id == rc.order_id))
                 .order_by(rc.created_at, rc.id).limit(limit))
        if state:
            query = query.where(rc.state == state)
        if order_id:
            query = query.where(rc.order_id == order_id)
        if after:
            query = query.where(await keyset.after(conn, rc.created_at, rc.id, after,
                                                   "review case"))
        return [render_case(c, allowed=allowed_actions(c, c.order_state, c.order_review_reason))
                for c in await conn.execute(query)]


async def _retire_live_attempts(conn: AsyncConnection, order_id: str, *, now: datetime,
                                quarantine: timedelta) -> None:
    """The order left review: its instruments still active are retired (superseded), not
    expired, so the verifier goes on reading them (an ``expire`` decided on a source's word
    may meet a payment whose webhook was lost) and money on them still reaches a person.
    A transfer amount held with no end (its attempt superseded by a switch of method while the
    order was open) starts its quarantine now too, as when settlement or the sweep closes the
    order: held for ever, it never returned to the pool and matched every later credit of it
    to this order."""
    a = payment_attempts.c
    active = (await conn.execute(sa.select(a.id).where(
        a.order_id == order_id, a.state == AttemptState.ACTIVE.value))).scalars().all()
    if active:
        await retire_attempts(conn, list(active), now=now, quarantine=quarantine)
    await conn.execute(payment_attempts.update().where(
        a.order_id == order_id, a.holds_code, a.code_held_until.is_(None)).values(
        closed_at=sa.func.coalesce(a.closed_at, sa.literal(now, a.closed_at.type)),
        code_held_until=now + quarantine))


MAX_NOTE = 2000
"""The length ``review_cases.note`` (and the audit log's reason) keeps."""


async def resolve_case(db: Database, *, case_id: str, action: str, actor: str, note: str,
                       now: datetime, quarantine: timedelta) -> dict[str, Any]:
    if action not in _ACTIONS:
        raise InvalidRequest(f"action must be one of: {', '.join(_ACTIONS)}", field="action")
    if not note.strip():
        raise InvalidRequest("say why in 'note'; it goes to the audit log", field="note")
    if len(note) > MAX_NOTE:
        raise InvalidRequest(f"'note' is kept to {MAX_NOTE} characters", field="note")
    async with db.transaction() as conn:
        # The order first, then the case: settlement and the expiry sweep lock an order and then
        # write its cases, and the other order deadlocked with them (review finding). A case
        # never changes order or mutation, so reading them unlocked is safe. Its mutation
        # before either: a manual match locks the mutation, then the order, then closes the case.
        held = (await conn.execute(sa.select(review_cases.c.order_id, review_cases.c.mutation_id)
                                   .where(review_cases.c.id == case_id))).first()
        order_id = held.order_id if held else None
        credit = None
        if held is not None and held.mutation_id is not None:
            credit = (await conn.execute(sa.select(mutations.c.match_state).where(
                mutations.c.id == held.mutation_id).with_for_update())).scalar()
        order = None
        if order_id is not None:
            order = (await conn.execute(sa.select(orders).where(orders.c.id == order_id)
                                        .with_for_update())).one()
        case = (await conn.execute(sa.select(review_cases).where(review_cases.c.id == case_id)
                                   .with_for_update())).first()
        if case is None:
            raise NotFound(f"no review case {case_id}")
        if case.state != "open":
            raise CaseClosed(f"case {case_id} was already resolved ({case.resolution}) by "
                             f"{case.resolved_by}")
        pending: list[PendingEvent] = []
        # Only a case the order waits in review for decides its state: a case opened beside it
        # (a possible reversal, a possible duplicate) records its decision and no more.
        governs = order is not None and case_decides_order(
            case.reason, order_state=order.state, review_reason=order.review_reason)
        allowed = allowed_actions(case, order.state if order else None,
                                  order.review_reason if order else None)
        if action not in allowed:
            raise ActionNotAllowed(
                f"{action} means nothing for this {case.reason} case on an order that is "
                f"{order.state if order else '-'}; allowed: {', '.join(allowed)}",
                field="action")
        if governs and action == RecommendedAction.REFUND.value:
            # Another payment waits beside this one for the same reason and may yet pay the
            # order: refunding this one answers for this one only.
            governs = not await _another_payment_waits(conn, case)
        if governs:
            assert order is not None
            state = next_order_state(OrderState.NEEDS_REVIEW, _ACTIONS[action])
            values: dict[str, Any] = {"state": state.value, "updated_at": now}
            if state is OrderState.PAID:
                values["paid_at"] = now
            await conn.execute(orders.update().where(orders.c.id == order.id).values(**values))
            await _retire_live_attempts(conn, order.id, now=now, quarantine=quarantine)
            moved = (await conn.execute(sa.select(orders).where(orders.c.id == order.id))).one()
            pending.append(PendingEvent(
                event_type=ORDER_EVENT_ON_ENTRY[state], aggregate_id=order.id,
                merchant_id=order.merchant_id,
                payload=event_payload(moved, review_case_id=case_id, resolution=action,
                                      **(_paid_by(case) if state is OrderState.PAID else {}))))
        await conn.execute(review_cases.update().where(review_cases.c.id == case_id).values(
            state="resolved", resolved_at=now, resolved_by=actor, resolution=action,
            note=note.strip()))
        if credit in FOR_PEOPLE:
            # A credit waiting for a person (a possible duplicate) is decided by this case: left
            # in the unmatched list, a manual match opened a second_payment case asking for the
            # refund this resolution may have made already.
            await conn.execute(mutations.update().where(mutations.c.id == case.mutation_id)
                               .values(match_state=DECIDED_IN_CASE))
        if order is not None:
            pending.append(PendingEvent(
                event_type=events.REVIEW_CASE_RESOLVED, aggregate_id=order.id,
                merchant_id=order.merchant_id,
                payload={"case_id": case_id, "order_id": order.id, "resolution": action,
                         "reason": case.reason}))
        await add_events(conn, pending, now=now)
        await record_audit(conn, actor=actor, action=f"review_case.{action}",
                           subject_type="review_case", subject_id=case_id, reason=note.strip(),
                           details={"order_id": case.order_id, "reason": case.reason}, now=now)
        resolved = (await conn.execute(sa.select(review_cases)
                                       .where(review_cases.c.id == case_id))).one()
    return render_case(resolved, allowed=[])


async def _another_payment_waits(conn: AsyncConnection, case: Any) -> bool:
    """Another open case of ``case``'s reason on its order: a second payment the order waits
    in review for (the caller holds the order's lock, so none opens or closes meanwhile)."""
    rc = review_cases.c
    return (await conn.execute(sa.select(rc.id).where(
        rc.order_id == case.order_id, rc.reason == case.reason, rc.state == "open",
        rc.id != case.id).limit(1))).first() is not None


def _paid_by(case: Any) -> dict[str, Any]:
    """Which payment a person paid the order with: the one the honoured case is about (the
    case id names it), said as settlement says a payment (``paid_amount``, ``paid_currency``
    when not rupiah), not another payment waiting beside it."""
    if case.currency is None:
        return {}  # a currency_mismatch case from before its currency was recorded
    if case.currency != RUPIAH:
        return {"paid_amount": case.amount, "paid_currency": case.currency}
    return {"paid_amount": case.amount}


MATCHED_MANUALLY = "matched_manually"
"""How a case holding a credit is resolved when a person matches that credit to an order."""


async def close_cases_of_credit(conn: AsyncConnection, mutation_id: str, *, actor: str,
                                note: str, now: datetime, opened_by_match: str | None
                                ) -> list[PendingEvent]:
    """A person matched ``mutation_id`` to an order: the open cases holding it (a possible
    duplicate) are answered by that match, closed in its name and audited. Left open, a second
    refund could be recorded there beside the second_payment case the match opened (that one,
    ``opened_by_match``, holds the credit too and stays open). The caller holds the mutation's
    lock and then its order's (this closes cases after both)."""
    rc = review_cases.c
    closed = (await conn.execute(
        review_cases.update().where(rc.mutation_id == mutation_id, rc.state == "open",
                                    rc.id != (opened_by_match or ""))
        .values(state="resolved", resolved_at=now, resolved_by=actor,
                resolution=MATCHED_MANUALLY, note=note)
        .returning(rc.id, rc.order_id, rc.reason))).all()
    pending = []
    for case in closed:
        await record_audit(conn, actor=actor, action=f"review_case.{MATCHED_MANUALLY}",
                           subject_type="review_case", subject_id=case.id, reason=note,
                           details={"order_id": case.order_id, "reason": case.reason,
                                    "mutation_id": mutation_id}, now=now)
        merchant_id = (await conn.execute(sa.select(orders.c.merchant_id).where(
            orders.c.id == case.order_id))).scalar()
        pending.append(PendingEvent(
            event_type=events.REVIEW_CASE_RESOLVED, aggregate_id=case.order_id,
            merchant_id=merchant_id,
            payload={"case_id": case.id, "order_id": case.order_id,
                     "resolution": MATCHED_MANUALLY, "reason": case.reason}))
    return pending
