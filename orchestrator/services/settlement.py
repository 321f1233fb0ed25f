"""Apply one piece of payment evidence to an attempt and its order, exactly once (rule 2).

The evidence row's unique key is the guard: a webhook delivered twice, a statement imported twice
or a person matching the same mutation again all write the same key, and only the first write
changes anything. Rows are locked order first, then attempt (one fixed order, so two settlements
of one order cannot deadlock); on SQLite the writer lock serialises instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.ids import new_id
from orchestrator.domain.money import RUPIAH, amount_text
from orchestrator.domain.order import (
    OPEN_ORDER_STATES,
    ORDER_EVENT_ON_ENTRY,
    AttemptState,
    AttemptTrigger,
    OrderState,
    PaymentVerdict,
    ReviewReason,
    judge_payment,
    next_attempt_state,
    next_order_state,
    recommended_beside_paid_order,
)
from orchestrator.domain.verification import VerificationSchedule
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import ProviderPayment, ProviderStatus, Rail
from orchestrator.services.audit import record_audit
from orchestrator.services.order_view import event_payload
from orchestrator.services.orders import retire_attempts
from orchestrator.services.status_reads import paid_evidence_key, settled_read
from orchestrator.store.database import upsert_insert
from orchestrator.store.tables import evidence, orders, payment_attempts, review_cases
from orchestrator.telemetry import tracing

# Built once and executed with parameters: a status-read drain settles ~100 orders a second in
# one worker, and building each statement per call (clauses, coercions, a fresh cache key) was
# a quarter of that worker's CPU. Values to SET come from the parameters' keys (SQLAlchemy names
# the SET clause after them), so one statement serves every combination.
_a, _o = payment_attempts.c, orders.c
_LOCK_ORDER_OF_ATTEMPT = sa.select(orders).where(_o.id == sa.select(_a.order_id).where(
    _a.id == sa.bindparam("attempt_id")).scalar_subquery()).with_for_update()
"""The order an attempt belongs to, locked (an attempt never changes order)."""
_LOCK_ATTEMPT = sa.select(payment_attempts).where(
    _a.id == sa.bindparam("attempt_id")).with_for_update()
_UPDATE_ATTEMPT = payment_attempts.update().where(_a.id == sa.bindparam("b_attempt_id"))
_UPDATE_ORDER = orders.update().where(_o.id == sa.bindparam("b_order_id"))
_OTHER_LIVE_ATTEMPTS = sa.select(_a.id).where(
    _a.order_id == sa.bindparam("order_id"), _a.id != sa.bindparam("paid_attempt_id"),
    _a.state.in_([AttemptState.ACTIVE.value, AttemptState.SUPERSEDED.value]))
_QUARANTINE_OTHER_CODES = payment_attempts.update().where(
    _a.order_id == sa.bindparam("b_order_id"), _a.id != sa.bindparam("b_paid_attempt_id"),
    _a.holds_code, _a.code_held_until.is_(None)).values(
        closed_at=sa.func.coalesce(_a.closed_at, sa.bindparam("b_now", type_=_a.closed_at.type)),
        code_held_until=sa.bindparam("b_held_until", type_=_a.code_held_until.type))
LUNAS_ACTOR = "lunas"
"""The actor Lunas records in the audit log for what it decided itself."""
_RECORD_EVIDENCE = {
    dialect: upsert_insert(dialect)(evidence).on_conflict_do_nothing(
        index_elements=["unique_key"]).returning(evidence.c.id)
    for dialect in ("postgresql", "sqlite")}


@dataclass(frozen=True, kw_only=True)
class Payment:
    """One observation that ``amount`` rupiah reached ``attempt_id`` (or ``amount`` of another
    ``currency``, as a provider reported it: never rupiah, always a person's case)."""

    attempt_id: str
    amount: int
    evidence_key: str
    kind: str  # "mutation" | "manual" | provider kinds later
    observed_at: datetime
    details: dict[str, Any]
    currency: str = RUPIAH
    reversed_since: bool = False
    """The source proving this payment says it already went back (``services.reversals``)."""
    reversed_in_part: bool = False
    """Of it, only part went back so far (``judge_payment``): the rest is still with the
    merchant."""
    provider_ref: str | None = None
    """The provider's id of what was paid, as the evidence names it: kept on an attempt that
    has none (its create's answer was lost), so its refund callback (which names only that id)
    finds it and its later reads (``settled_reads``) read the charge, which shows a refund, not
    the payment looked up by reference, which does not."""


@dataclass(frozen=True, kw_only=True)
class SettlementResult:
    applied: bool  # False: this evidence was already applied
    verdict: PaymentVerdict | None
    order_id: str
    order_state: str
    review_case_id: str | None = None


async def apply_payment(
    conn: AsyncConnection, payment: Payment, *, now: datetime, quarantine: timedelta,
    mutation_id: str | None = None, rereads: VerificationSchedule | None = None,
) -> SettlementResult:
    """Apply ``payment`` inside the caller's transaction. ``rereads``: the schedule whose
    ``settled_reads`` an attempt this payment makes paid is read again on, in the same
    transaction as it becomes paid (None: never; mutation evidence pays manual transfers, which
    have no status API)."""
    order = (await conn.execute(_LOCK_ORDER_OF_ATTEMPT,
                                {"attempt_id": payment.attempt_id})).one()
    # The order's own trace: a webhook joined it already; a status read or a mutation joins here.
    with tracing.flow_span("settlement", order.trace_context, attributes=tracing.order_attributes(
            order.id, payment.attempt_id, evidence=payment.kind)) as span:
        result = await _apply_locked(conn, payment, order, now=now, quarantine=quarantine,
                                     mutation_id=mutation_id, rereads=rereads)
        span.set_attributes({"lunas.applied": result.applied,
                             "lunas.verdict": result.verdict.value if result.verdict else "",
                             "lunas.order_state": result.order_state})
        return result


async def _apply_locked(
    conn: AsyncConnection, payment: Payment, order: Any, *, now: datetime,
    quarantine: timedelta, mutation_id: str | None, rereads: VerificationSchedule | None,
) -> SettlementResult:
    attempt = (await conn.execute(_LOCK_ATTEMPT, {"attempt_id": payment.attempt_id})).one()
    decision = judge_payment(order_state=OrderState(order.state),
                             expected=attempt.transfer_amount, received=payment.amount,
                             review_reason=order.review_reason,
                             decided_unproven=await _decided_unproven(conn, order),
                             currency=payment.currency,
                             reversed_since=payment.reversed_since,
                             reversed_in_part=payment.reversed_in_part)
    recorded = await conn.execute(_RECORD_EVIDENCE[conn.dialect.name], {
        "unique_key": payment.evidence_key, "kind": payment.kind, "order_id": order.id,
        "attempt_id": attempt.id, "amount": payment.amount, "verdict": decision.verdict.value,
        "observed_at": payment.observed_at, "recorded_at": now,
        "details": _foreign(payment, payment.details, "currency")})
    if recorded.first() is None:
        return SettlementResult(applied=False, verdict=None, order_id=order.id,
                                order_state=order.state)
    pending: list[PendingEvent] = await _mark_attempt_paid(
        conn, attempt, now=now, quarantine=quarantine, rereads=rereads,
        provider_ref=payment.provider_ref)
    new_state = order.state
    if decision.order_trigger is not None:
        new_state = next_order_state(OrderState(order.state), decision.order_trigger).value
        await _move_order(conn, order, new_state, decision.review_reason, now=now)
        if new_state not in {s.value for s in OPEN_ORDER_STATES}:
            await _retire_others(conn, order.id, attempt.id, now=now, quarantine=quarantine)
        pending.append(_order_event(order, new_state, decision.review_reason, payment,
                                    now=now))
        if order.state == OrderState.NEEDS_REVIEW.value:
            note = (f"{amount_text(payment.amount, payment.currency)} confirmed by "
                    f"{payment.kind} evidence {payment.evidence_key}")
            pending.extend(await close_window_cases(
                conn, [order], resolution=PAYMENT_FOUND, now=now, note=note))
            if new_state == OrderState.PAID.value:
                pending.extend(await _leave_beside_paid_order(conn, order, note=note, now=now))
    case_id = None
    if decision.review_reason is not None:
        case_id = await open_review_case(conn, order, decision.review_reason.value,
                                   decision.recommended_action.value
                                   if decision.recommended_action else "refund",
                                   payment.amount, mutation_id, now=now,
                                   currency=payment.currency)
        pending.append(PendingEvent(
            event_type=events.REVIEW_CASE_OPENED, aggregate_id=order.id,
            merchant_id=order.merchant_id,
            payload=_foreign(payment, {
                "case_id": case_id, "order_id": order.id,
                "merchant_order_id": order.merchant_order_id,
                "reason": decision.review_reason.value,
                "recommended_action": decision.recommended_action.value
                if decision.recommended_action else None,
                "amount": payment.amount}, "currency"),
        ))
    await add_events(conn, pending, now=now)
    return SettlementResult(applied=True, verdict=decision.verdict, order_id=order.id,
                            order_state=new_state, review_case_id=case_id)


async def apply_read_payments(
    conn: AsyncConnection, attempt: Any, status: ProviderStatus, *, kind: str,
    details: dict[str, Any], now: datetime, quarantine: timedelta,
    rereads: VerificationSchedule | None = None, reversed_since: bool = False,
    reversed_in_part: bool = False,
) -> SettlementResult:
    """Apply a provider's word that ``attempt`` was paid: each payment it lists
    (``ProviderStatus.payments``; else the one it describes) as evidence of its own, the
    ``n``-th under ``paid_evidence_key(..., n)``, so a payment seen before (by a read or a
    callback) is not applied again and a further one pays the order or opens its case (rule
    4), never adds into one wrong amount. Which listed payments were recorded already is told
    by amount first (``_keys_of``), so a callback that paid as the first with a later payment
    does not make the earlier one "already applied". Returns the first result that applied
    anything (the order's state the last), else the first."""
    listed = status.payments or (ProviderPayment(
        amount=status.paid_amount if status.paid_amount is not None else 0,
        paid_at=status.paid_at or now, currency=status.currency),)
    keys = await _keys_of(conn, attempt, listed)
    results = [await apply_payment(conn, Payment(
        attempt_id=attempt.id, amount=paid.amount, evidence_key=key, kind=kind,
        observed_at=paid.paid_at, currency=paid.currency,
        details=details if len(listed) == 1 else {**details, "payment": nth,
                                                  "payments_listed": len(listed)},
        reversed_since=reversed_since, reversed_in_part=reversed_in_part,
        provider_ref=status.provider_ref), now=now, quarantine=quarantine, rereads=rereads)
        for nth, (paid, key) in enumerate(zip(listed, keys, strict=True), start=1)]
    applied = [r for r in results if r.applied]
    return replace(applied[0] if applied else results[0], order_state=results[-1].order_state)


async def _keys_of(conn: AsyncConnection, attempt: Any,
                   listed: tuple[ProviderPayment, ...]) -> list[str]:
    """The evidence key of each payment ``listed`` on ``attempt``: a payment recorded already
    keeps its key (so it is not applied again), any other takes the lowest ``nth`` free.

    A VA callback pays as the first payment whichever it is (its ``payment_id`` has no
    counterpart in a read), so the recorded ones are found among those listed by amount
    first, and only then, for a recorded amount no listed payment has, oldest first. Told by
    place in the list alone, a later payment of another amount whose callback came first left
    the earlier one "already applied" (money nobody was told of, rule 4) and was applied
    again in its place. The order is locked first, as ``apply_payment`` locks it, so two
    transactions do not read the same keys free."""
    await conn.execute(_LOCK_ORDER_OF_ATTEMPT, {"attempt_id": attempt.id})
    first = paid_evidence_key(attempt.provider, attempt.id)
    e = evidence.c
    recorded = (await conn.execute(sa.select(e.unique_key, e.amount).where(
        e.attempt_id == attempt.id,
        sa.or_(e.unique_key == first, e.unique_key.startswith(f"{first}:")))
        .order_by(e.id))).all()
    keys: list[str | None] = [None] * len(listed)
    unplaced = []
    for row in recorded:
        same = next((i for i, paid in enumerate(listed)
                     if keys[i] is None and paid.amount == row.amount), None)
        if same is None:
            unplaced.append(row.unique_key)
        else:
            keys[same] = row.unique_key
    for key in unplaced:
        oldest = next((i for i, k in enumerate(keys) if k is None), None)
        if oldest is not None:
            keys[oldest] = key
    taken = {row.unique_key for row in recorded}
    free = (paid_evidence_key(attempt.provider, attempt.id, nth) for nth in range(1, 10**6))
    return [k if k is not None else next(f for f in free if f not in taken) for k in keys]


def _foreign(payment: Payment, values: dict[str, Any], key: str = "paid_currency"
             ) -> dict[str, Any]:
    """``values`` with the payment's currency under ``key`` when it is not rupiah, so nobody
    reading the evidence or an event takes its amount for rupiah (an order event's own
    ``currency`` is the order's); unchanged for rupiah, as before."""
    return values if payment.currency == RUPIAH else {**values, key: payment.currency}


async def _decided_unproven(conn: AsyncConnection, order: Any) -> bool:
    """A person paid or refunded this order while its payment could not be verified, and no
    payment evidence has reached it since (asked only of such orders: one indexed query)."""
    if (order.state not in (OrderState.PAID.value, OrderState.REFUNDED.value)
            or order.review_reason != ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value):
        return False
    seen = (await conn.execute(sa.select(evidence.c.id).where(
        evidence.c.order_id == order.id).limit(1))).first()
    return seen is None


PAYMENT_FOUND = "payment_found"
NO_PAYMENT_FOUND = "no_payment_found"
"""How Lunas resolves a case that asked whether an order was paid, once its sources answer:
a payment was found (the order settles) or, every source read again, none was (it expires)."""


async def close_window_cases(
    conn: AsyncConnection, orders_answered: list[Any], *, resolution: str, note: str,
    now: datetime,
) -> list[PendingEvent]:
    """The orders were in review only because their payment could not be verified in time, and
    their sources have now answered: their open cases are closed by Lunas, audited, and the
    merchants hear it (a person would otherwise find a case whose question is settled)."""
    if not orders_answered:
        return []
    rc = review_cases.c
    closed = (await conn.execute(
        review_cases.update().where(
            rc.order_id.in_([o.id for o in orders_answered]), rc.state == "open",
            rc.reason == ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value)
        .values(state="resolved", resolved_at=now, resolved_by=LUNAS_ACTOR,
                resolution=resolution, note=note)
        .returning(rc.id, rc.order_id, rc.reason))).all()
    merchant = {o.id: o.merchant_id for o in orders_answered}
    for case in closed:
        await record_audit(conn, actor=LUNAS_ACTOR, action=f"review_case.{resolution}",
                           subject_type="review_case", subject_id=case.id, reason=note,
                           details={"order_id": case.order_id, "reason": case.reason}, now=now)
    return [PendingEvent(
        event_type=events.REVIEW_CASE_RESOLVED, aggregate_id=case.order_id,
        merchant_id=merchant[case.order_id],
        payload={"case_id": case.id, "order_id": case.order_id, "resolution": resolution,
                 "reason": case.reason}) for case in closed]


RECOMMENDATION_CHANGED = "recommendation_changed"


async def _leave_beside_paid_order(conn: AsyncConnection, order: Any, *, note: str,
                                   now: datetime) -> list[PendingEvent]:
    """``order`` waited in review for its open cases of its review reason (a payment of the
    wrong amount or currency), and an exact payment has paid it: they stay open beside it,
    no longer deciding it (``case_decides_order``), and recommend what money beside a paid
    order needs (``recommended_beside_paid_order``). A recommendation that changes is audited,
    and the merchant, told the first one when the case opened, hears the new one."""
    rc = review_cases.c
    waiting = (await conn.execute(sa.select(review_cases).where(
        rc.order_id == order.id, rc.state == "open", rc.reason == order.review_reason)
        .order_by(rc.created_at, rc.id))).all()
    pending = []
    for case in waiting:
        action = recommended_beside_paid_order(case.reason, case.recommended_action)
        if action == case.recommended_action:
            continue
        await conn.execute(review_cases.update().where(rc.id == case.id)
                           .values(recommended_action=action))
        await record_audit(conn, actor=LUNAS_ACTOR,
                           action=f"review_case.{RECOMMENDATION_CHANGED}",
                           subject_type="review_case", subject_id=case.id, reason=note,
                           details={"order_id": order.id, "reason": case.reason,
                                    "from": case.recommended_action, "to": action}, now=now)
        pending.append(PendingEvent(
            event_type=events.REVIEW_CASE_UPDATED, aggregate_id=order.id,
            merchant_id=order.merchant_id,
            payload={"case_id": case.id, "order_id": order.id,
                     "merchant_order_id": order.merchant_order_id, "reason": case.reason,
                     "recommended_action": action, "amount": case.amount,
                     **({"currency": case.currency}
                        if case.currency not in (None, RUPIAH) else {})}))
    return pending


async def _mark_attempt_paid(
    conn: AsyncConnection, attempt: Any, *, now: datetime, quarantine: timedelta,
    rereads: VerificationSchedule | None, provider_ref: str | None = None,
) -> list[PendingEvent]:
    """Mark the attempt paid; returns the events that causes (its first read again), for the
    caller's one insert of the settlement's events. ``provider_ref``: the evidence's id of
    what was paid, kept if the attempt has none (``Payment.provider_ref``)."""
    if attempt.state == AttemptState.PAID.value:
        return []  # a second payment on one instrument: the attempt already says where it went
    state = next_attempt_state(AttemptState(attempt.state), AttemptTrigger.PAID)
    # The amount stays held for the quarantine, so a repeated transfer is seen as a second payment.
    values: dict[str, Any] = {
        "b_attempt_id": attempt.id, "state": state.value, "updated_at": now, "closed_at": now,
        "code_held_until": now + quarantine if attempt.holds_code else None}
    if attempt.provider_ref is None and provider_ref:
        values["provider_ref"] = provider_ref[:128]
    await conn.execute(_UPDATE_ATTEMPT, values)
    # Nothing else reads a paid attempt again: its reversal, notified and lost, would be too.
    due = (rereads.next_settled_read(Rail(attempt.rail), reads_done=0, last=now)
           if rereads is not None else None)
    return [settled_read(attempt.id, read=1, due=due)] if due is not None else []


async def _move_order(
    conn: AsyncConnection, order: Any, state: str, reason: ReviewReason | None, *, now: datetime
) -> None:
    values: dict[str, Any] = {"b_order_id": order.id, "state": state, "updated_at": now}
    if state == OrderState.PAID.value:
        values["paid_at"] = now
    if reason is not None and state == OrderState.NEEDS_REVIEW.value:
        values["review_reason"] = reason.value
    await conn.execute(_UPDATE_ORDER, values)


async def _retire_others(
    conn: AsyncConnection, order_id: str, paid_attempt_id: str, *, now: datetime,
    quarantine: timedelta,
) -> None:
    """The order is settled (or in review): its other live instruments are retired, still
    watched through the code quarantine (rule 4), and cancelled at their providers; attempts
    that closed earlier start the quarantine now if they still hold a code."""
    live = (await conn.execute(_OTHER_LIVE_ATTEMPTS, {
        "order_id": order_id, "paid_attempt_id": paid_attempt_id})).scalars().all()
    if live:
        await retire_attempts(conn, list(live), now=now, quarantine=quarantine)
    await conn.execute(_QUARANTINE_OTHER_CODES, {
        "b_order_id": order_id, "b_paid_attempt_id": paid_attempt_id, "b_now": now,
        "b_held_until": now + quarantine})


def _order_event(
    order: Any, new_state: str, reason: ReviewReason | None, payment: Payment, *,
    now: datetime,
) -> PendingEvent:
    """The order as ``_move_order`` left it (``order`` is the row read before)."""
    moved = dict(order._mapping)
    moved["state"] = new_state
    if new_state == OrderState.PAID.value:
        moved["paid_at"] = now
    extra: dict[str, Any] = _foreign(payment, {"paid_amount": payment.amount,
                                               "evidence": payment.kind})
    if reason is not None:
        extra["review_reason"] = reason.value
    return PendingEvent(
        event_type=ORDER_EVENT_ON_ENTRY[OrderState(new_state)], aggregate_id=order.id,
        merchant_id=order.merchant_id,
        payload=event_payload(_Obj(moved), **extra),
    )


async def open_review_case(
    conn: AsyncConnection, order: Any, reason: str, action: str, amount: int,
    mutation_id: str | None, *, now: datetime, currency: str = RUPIAH,
) -> str:
    case_id = new_id("rev")
    await conn.execute(review_cases.insert().values(
        id=case_id, order_id=order.id, mutation_id=mutation_id, reason=reason,
        recommended_action=action, amount=amount, currency=currency, state="open",
        created_at=now,
    ))
    return case_id


class _Obj:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
