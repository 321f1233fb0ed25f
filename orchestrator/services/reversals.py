"""Money that left a paid attempt again: a chargeback, or a refund made at the provider.

No edge leaves ``paid`` (ARCHITECTURE.md §3): Lunas cannot tell from here whether the merchant
will contest a chargeback or already took the goods back, so the order keeps its state and a
person decides. What changes is that the money's new truth reaches a person and the merchant: a
review case (``chargeback`` → ``dispute_or_accept``; ``refunded_at_provider`` →
``check_at_source``) and its ``review_case.opened`` event, in the transaction that records the
reversal.

Only a source Lunas trusts says a payment was reversed: a status read (a Midtrans notification's
signature leaves ``transaction_status`` out, so a signed settlement relabelled ``chargeback``
verifies; the webhook path confirms with a read first). A reversal read on an attempt Lunas has
not seen paid (its settlement notification was lost) proves the payment too, so the payment is
applied first, exactly once through the same evidence key as any read of it, judged as money
that went back (``judge_payment``'s ``reversed_since``): on an order paid through another
attempt it opens no ``second_payment`` case, whose refund would pay the customer twice. Unless
only part of it went back (``reversed_amount`` below the payment): the rest is still with the
merchant, so that case stays, asking a person to check at the source what is left to refund.

Each reversal is recorded once, as evidence keyed ``{provider}:reversal:{attempt}:{raw
status}``, plus ``:{total}`` when the provider says how much has gone back so far
(``ProviderStatus.reversed_amount``): a repeat (another notification, a replayed read) finds
the key and opens nothing. A ``partial_chargeback`` after a ``chargeback`` of one attempt is a
second fact and a second case, and so is a second ``partial_chargeback`` (or
``partial_refund``) that took more back: its case is for what this one took back, the new total
less what the attempt's earlier cases of that reason already count. Without a total, a second
partial reversal of the same raw status cannot be told from a repeat, and opens nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.money import RUPIAH
from orchestrator.domain.order import RecommendedAction, ReviewReason
from orchestrator.domain.verification import VerificationSchedule
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import NeutralStatus, ProviderStatus
from orchestrator.services.settlement import Payment, apply_payment, open_review_case
from orchestrator.services.status_reads import paid_evidence_key
from orchestrator.store.database import upsert_insert
from orchestrator.store.tables import evidence, orders, payment_attempts

REVERSALS: dict[NeutralStatus, tuple[ReviewReason, RecommendedAction]] = {
    NeutralStatus.CHARGED_BACK: (ReviewReason.CHARGEBACK, RecommendedAction.DISPUTE_OR_ACCEPT),
    NeutralStatus.REFUNDED: (ReviewReason.REFUNDED_AT_PROVIDER,
                             RecommendedAction.CHECK_AT_SOURCE),
}
"""What a provider's word that a payment went back asks of a person."""


def reversal_key(provider: str, attempt_id: str, raw_status: str,
                 total: int | None = None) -> str:
    suffix = f":{total}" if total is not None else ""
    return f"{provider}:reversal:{attempt_id}:{raw_status}{suffix}"[:200]


async def _newly_reversed(conn: AsyncConnection, attempt: Any, reason: ReviewReason,
                          total: int) -> int:
    """What a reversal whose total so far is ``total`` took back beyond the attempt's earlier
    reversals of ``reason``: 0 or less when they already count as much (a read older than one
    recorded, committing after it; the same refund seen again under another status)."""
    before = (await conn.execute(sa.select(sa.func.coalesce(sa.func.sum(evidence.c.amount), 0))
                                 .where(evidence.c.attempt_id == attempt.id,
                                        evidence.c.verdict == reason.value,
                                        evidence.c.unique_key.like(
                                            f"{attempt.provider}:reversal:%")))).scalar_one()
    return total - int(before)


async def apply_reversal(conn: AsyncConnection, attempt: Any, status: ProviderStatus, *,
                         kind: str, details: dict[str, Any], now: datetime,
                         quarantine: timedelta,
                         rereads: VerificationSchedule | None = None) -> str | None:
    """Record, inside the caller's transaction, that ``status`` (a status read's answer, one of
    ``REVERSALS``) reversed the payment on ``attempt``. Returns the case opened, or None when
    this reversal was recorded before. ``rereads``: as ``apply_payment``'s, for a payment this
    read proves first (a reversal in part may be followed by more)."""
    reason, action = REVERSALS[status.status]
    if status.paid_amount is not None:
        # Locks the order, then the attempt (settlement's order); a no-op when already applied.
        await apply_payment(conn, Payment(
            attempt_id=attempt.id, amount=status.paid_amount,
            evidence_key=paid_evidence_key(attempt.provider, attempt.id), kind=kind,
            observed_at=status.paid_at or now, details={**details, "seen_as": status.raw_status},
            currency=status.currency, reversed_since=True, provider_ref=status.provider_ref,
            # A partial refund (Xendit's running ``refunded_amount``, Midtrans's
            # ``partial_refund``) left the rest with the merchant: a second payment's case stays.
            reversed_in_part=(status.reversed_amount is not None
                              and status.reversed_amount < status.paid_amount)),
            now=now, quarantine=quarantine, rereads=rereads)
    order = (await conn.execute(sa.select(orders).where(orders.c.id == sa.select(
        payment_attempts.c.order_id).where(payment_attempts.c.id == attempt.id)
        .scalar_subquery()).with_for_update())).one()
    # A reversal whose amount the provider does not say is of the whole payment (Midtrans
    # ``refund``, not ``partial_refund``), or, proving no payment of a known amount, of what the
    # attempt asked for: less what earlier reversals of it took back already, so a full refund
    # after a partial one asks a person about the rest, not the whole again.
    total = (status.reversed_amount if status.reversed_amount is not None
             else status.paid_amount if status.paid_amount is not None
             else int(attempt.transfer_amount))
    amount = await _newly_reversed(conn, attempt, reason, total)
    if amount <= 0:
        # Running totals only grow: this one is covered by what is recorded. Two reads of one
        # charge race (one made after the first refund, one after the second, committing in the
        # other order): the older must not open a case for its total again.
        return None
    recorded = await conn.execute(
        upsert_insert(conn.dialect.name)(evidence).values(
            unique_key=reversal_key(attempt.provider, attempt.id, status.raw_status,
                                    status.reversed_amount),
            kind=kind, order_id=order.id, attempt_id=attempt.id, amount=amount,
            verdict=reason.value, observed_at=now, recorded_at=now,
            details={**details, "raw_status": status.raw_status,
                     **({"reversed_so_far": status.reversed_amount}
                        if status.reversed_amount is not None else {}),
                     **({"currency": status.currency} if status.currency != RUPIAH else {})})
        .on_conflict_do_nothing(index_elements=["unique_key"]).returning(evidence.c.id))
    if recorded.first() is None:
        return None
    case_id = await open_review_case(conn, order, reason.value, action.value, amount, None,
                                     now=now, currency=status.currency)
    await add_events(conn, [PendingEvent(
        event_type=events.REVIEW_CASE_OPENED, aggregate_id=order.id,
        merchant_id=order.merchant_id,
        payload={"case_id": case_id, "order_id": order.id,
                 "merchant_order_id": order.merchant_order_id, "reason": reason.value,
                 "recommended_action": action.value, "amount": amount,
                 "currency": status.currency, "attempt_id": attempt.id,
                 "provider_status": status.raw_status})], now=now)
    return case_id
