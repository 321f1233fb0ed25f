"""Deadlines: unpaid orders expire at ``expires_at``; held transfer amounts return to the pool
after their quarantine, once its WIB day is over. Run by every worker; ``SKIP LOCKED`` lets
several share the sweep."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.clock import WIB
from orchestrator.domain.order import AttemptState, OrderState, RecommendedAction, ReviewReason
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import Rail
from orchestrator.reconciliation.matcher import BANK_CLOCK_SKEW
from orchestrator.services.order_view import event_payload, pending_verification
from orchestrator.services.orders import close_attempts
from orchestrator.services.settlement import (
    NO_PAYMENT_FOUND,
    close_window_cases,
    open_review_case,
)
from orchestrator.services.status_reads import LIVE, route_of
from orchestrator.store.database import Database
from orchestrator.store.tables import evidence, orders, payment_attempts

_EXPIRABLE = (OrderState.CAPTURED.value, OrderState.AWAITING_PAYMENT.value)
_UNSETTLED = (AttemptState.UNKNOWN.value, AttemptState.CREATING.value)
_GATEWAY_LIVE = (AttemptState.ACTIVE.value, AttemptState.SUPERSEDED.value)
_MANUAL_LIVE = (AttemptState.ACTIVE.value, AttemptState.SUPERSEDED.value)

PROVIDER_UNAVAILABLE = "provider_unavailable"
BANK_FEED_STALE = "bank_feed_stale"


class SourceHealth(Protocol):
    """What expiry must know about the sources of truth right now."""

    def route_unavailable(self, route_key: str) -> bool:
        """True while the route's breaker refuses calls (its status cannot be read)."""
        ...

    def retry_at(self, route_key: str) -> datetime | None: ...

    def feed_stale(self, now: datetime) -> bool:
        """True when a mutation feed is configured and has not polled successfully lately."""
        ...

    def feed_caught_up(self, deadline: datetime) -> bool:
        """True when no feed is configured, or it has polled successfully since ``deadline``:
        a transfer made before the deadline would have been seen by now."""
        ...

    def next_feed_poll(self, now: datetime) -> datetime | None: ...


class AllSourcesUp:
    """No breakers open and no feed configured: the health of a process that calls nothing."""

    def route_unavailable(self, route_key: str) -> bool:
        return False

    def retry_at(self, route_key: str) -> datetime | None:
        return None

    def feed_stale(self, now: datetime) -> bool:
        return False

    def feed_caught_up(self, deadline: datetime) -> bool:
        return True

    def next_feed_poll(self, now: datetime) -> datetime | None:
        return None


@dataclass(frozen=True, kw_only=True)
class _Sources:
    """One order's attempts as expiry sees them."""

    gateway: list[Any]  # live or unsettled gateway attempts: their status must be read first
    manual: list[Any]  # live manual-transfer attempts: the mutation feed must have caught up

    def describe(self) -> list[str]:
        return sorted({route_of(a).key for a in self.gateway}) + (
            ["bank_feed"] if self.manual else [])

    def waiting_on(self, health: SourceHealth, now: datetime) -> tuple[str | None, list[str]]:
        """Why this order cannot be decided now (a reason code and the sources), if it cannot."""
        down = sorted({route_of(a).key for a in self.gateway
                       if health.route_unavailable(route_of(a).key)})
        if down:
            return PROVIDER_UNAVAILABLE, down
        if self.manual and health.feed_stale(now):
            return BANK_FEED_STALE, ["bank_feed"]
        return None, []


async def expire_due_orders(
    db: Database, *, now: datetime, quarantine: timedelta, batch: int,
    health: SourceHealth | None = None, claim_lease: timedelta = timedelta(seconds=60),
) -> int:
    """Handle up to ``batch`` orders whose deadline has passed; returns how many.

    Money that may have moved is checked before an order expires (rule 3). An order with a live
    or unsettled gateway attempt goes to ``verifying`` and its reads are made due now; the
    verifier reads them (or defers them while the route's breaker is open) and
    ``settle_verifying_orders`` expires the order once no attempt is left unread. A
    manual-transfer order waits in ``verifying`` while the mutation feed is stale. When a source
    is down the merchant is told: ``order.payment_pending``, with the next check time. With a
    feed configured, a manual-transfer order also waits until a poll that began after its
    deadline has been read, stale or not: a transfer made just before the deadline would
    otherwise be missed (rule 3).
    """
    health = health or AllSourcesUp()
    async with db.transaction() as conn:
        due = (await conn.execute(
            sa.select(orders).where(orders.c.state.in_(_EXPIRABLE), orders.c.expires_at <= now)
            .order_by(orders.c.expires_at).limit(batch)
            .with_for_update(skip_locked=True)
        )).all()
        if not due:
            return 0
        sources = await _sources(conn, [o.id for o in due])
        waiting, pending_events = [], []
        for o in due:
            src = sources.get(o.id, _Sources(gateway=[], manual=[]))
            reason, routes = src.waiting_on(health, now)
            unread_transfer = bool(src.manual) and not health.feed_caught_up(o.expires_at)
            if src.gateway or reason is not None or unread_transfer:
                waiting.append(o)
            # A read the verifier defers from now on announces itself (verification.py); a read
            # deferred before the deadline and the feed's wait are announced here.
            parked = sorted({a.deferred_on for a in src.gateway if a.deferred_on})
            if parked:
                pending_events.append(_payment_pending(o, PROVIDER_UNAVAILABLE, parked, health,
                                                       now))
            elif reason == BANK_FEED_STALE:
                pending_events.append(_payment_pending(o, reason, routes, health, now))
        if waiting:
            ids = [o.id for o in waiting]
            await conn.execute(orders.update().where(orders.c.id.in_(ids)).values(
                state=OrderState.VERIFYING.value, updated_at=now, verifying_since=now))
            # Reads due within a claim lease are left alone: they may be claimed and in flight
            # right now (a claim moves next_check_at one lease ahead), and pulling them forward
            # would have a second verifier read them again; they happen within the lease anyway.
            a = payment_attempts.c
            await conn.execute(payment_attempts.update().where(
                a.order_id.in_(ids), a.state.in_(LIVE), a.rail != Rail.MANUAL_TRANSFER.value,
                a.deferred_on.is_(None),
                sa.or_(a.next_check_at.is_(None), a.next_check_at > now + claim_lease),
            ).values(next_check_at=now))
            await add_events(conn, pending_events, now=now)
        await _expire(conn, [o for o in due if o not in waiting], now=now,
                      quarantine=quarantine)
        return len(due)


async def settle_verifying_orders(
    db: Database, *, now: datetime, quarantine: timedelta, window: timedelta, batch: int,
    health: SourceHealth | None = None,
) -> int:
    """Orders in ``verifying``: expire those whose sources have all been read (no gateway
    attempt left live or unsettled; the feed caught up past the deadline); send those still
    waiting ``window`` after they entered ``verifying`` to a person (rule 6), with the reason.

    The window runs from entry, not from the deadline: a sweep that first sees an order long
    after its deadline (a worker back from an outage longer than the window, a clock that
    jumped) must have it read before a person is asked, or every such order would go to review
    in the pass that put it in ``verifying``, its provider unread and perhaps up."""
    health = health or AllSourcesUp()
    a = payment_attempts.c
    unread_gateway = sa.exists().where(
        a.order_id == orders.c.id, a.rail != Rail.MANUAL_TRANSFER.value,
        a.state.in_(_GATEWAY_LIVE + _UNSETTLED))
    verifying = orders.c.state == OrderState.VERIFYING.value
    # While the feed is stale, orders waiting on it are not picked: thousands of them (sorted
    # first by deadline) would fill every batch and starve gateway orders whose provider is
    # back. The overdue pick still reaches them when their window runs out.
    unread_feed = (sa.exists().where(
        a.order_id == orders.c.id, a.rail == Rail.MANUAL_TRANSFER.value,
        a.state.in_(_MANUAL_LIVE)) if health.feed_stale(now) else sa.false())
    since = orders.c.verifying_since
    async with db.transaction() as conn:
        await _stamp_entry(conn, batch=batch, skip_locked=not db.is_sqlite)
        # Two picks, so orders parked behind a provider that is down (possibly thousands, all
        # still waiting) never crowd out the ones that can be decided now or are overdue.
        ready = (await conn.execute(
            sa.select(orders).where(verifying, ~unread_gateway, ~unread_feed)
            .order_by(orders.c.expires_at).limit(batch).with_for_update(skip_locked=True)
        )).all()
        overdue_pick = (await conn.execute(
            sa.select(orders).where(verifying, since <= now - window,
                                    orders.c.id.not_in([o.id for o in ready]))
            .order_by(since).limit(batch).with_for_update(skip_locked=True)
        )).all()
        waiting = [*ready, *overdue_pick]
        # Orders sent to a person because the window ran out, whose sources are back and have
        # been read: the question the review asked is answered (a payment found would have
        # settled the order already, settlement.py), so they are decided as here.
        # An order with any payment evidence is never expired here: before this pick existed,
        # a payment proven after the window was recorded beside the order and left it in
        # review (with a refund case); such orders wait for a person (migration 0014).
        seen_paid = sa.exists().where(evidence.c.order_id == orders.c.id)
        in_review = (await conn.execute(
            sa.select(orders).where(
                orders.c.state == OrderState.NEEDS_REVIEW.value,
                orders.c.review_reason == ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value,
                ~unread_gateway, ~unread_feed, ~seen_paid)
            .order_by(orders.c.expires_at).limit(batch).with_for_update(skip_locked=True)
        )).all()
        if not waiting and not in_review:
            return 0
        sources = await _sources(conn, [o.id for o in [*waiting, *in_review]])

        def still_waiting(o: Any) -> bool:
            src = sources.get(o.id)
            return src is not None and (bool(src.gateway) or (
                bool(src.manual) and not health.feed_caught_up(o.expires_at)))

        open_ = [o for o in waiting if still_waiting(o)]
        unpaid = [o for o in in_review if not still_waiting(o)]
        await _expire(conn, [o for o in waiting if o not in open_] + unpaid, now=now,
                      quarantine=quarantine)
        await add_events(conn, await close_window_cases(
            conn, unpaid, resolution=NO_PAYMENT_FOUND, now=now,
            note="every source was read again after it recovered: no payment"), now=now)
        # A row the stamp passed by (locked then) and the ready pick took has none until the
        # next pass: not overdue yet.
        overdue = [o for o in open_ if o.verifying_since is not None
                   and o.verifying_since + window <= now]
        reason = ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value
        action = RecommendedAction.CHECK_AT_SOURCE.value
        review: list[PendingEvent] = []
        for o in overdue:
            await conn.execute(orders.update().where(orders.c.id == o.id).values(
                state=OrderState.NEEDS_REVIEW.value, updated_at=now, review_reason=reason))
            # A case, so a person can decide it (honour, refund, or expire when the source shows
            # no payment); a payment proven later closes it and settles the order instead.
            case_id = await open_review_case(conn, o, reason, action, o.amount, None, now=now)
            review += [PendingEvent(
                event_type=events.ORDER_NEEDS_REVIEW, aggregate_id=o.id,
                merchant_id=o.merchant_id,
                payload={**event_payload(o), "status": OrderState.NEEDS_REVIEW.value,
                         "review_reason": reason, "waiting_on": sources[o.id].describe(),
                         "review_case_id": case_id, "recommended_action": action},
            ), PendingEvent(
                event_type=events.REVIEW_CASE_OPENED, aggregate_id=o.id,
                merchant_id=o.merchant_id,
                payload={"case_id": case_id, "order_id": o.id,
                         "merchant_order_id": o.merchant_order_id, "reason": reason,
                         "recommended_action": action, "amount": o.amount},
            )]
        await add_events(conn, review, now=now)
        return len(waiting) - len(open_) + len(overdue) + len(unpaid)


async def _stamp_entry(conn: AsyncConnection, *, batch: int, skip_locked: bool) -> None:
    """Give an order in ``verifying`` without ``verifying_since`` the time it entered: one put
    there before revision 0023, or by an older worker still running while this code starts. That
    is its ``updated_at``: nothing else writes an order while it waits there. Without it the
    order would never be picked as overdue and could wait for ever (rule 6)."""
    unstamped = sa.select(orders.c.id).where(
        orders.c.state == OrderState.VERIFYING.value, orders.c.verifying_since.is_(None)
    ).limit(batch)
    if skip_locked:  # a row another transaction holds is stamped on a later pass
        unstamped = unstamped.with_for_update(skip_locked=True)
    # Looked up apart (through ix_orders_verifying_since; normally none), not as a subquery of
    # the UPDATE: PostgreSQL, expecting many (most orders have no verifying_since), planned
    # that as a scan of every order, every pass.
    ids = (await conn.execute(unstamped)).scalars().all()
    if ids:
        await conn.execute(orders.update().where(orders.c.id.in_(ids))
                           .values(verifying_since=orders.c.updated_at))


async def _sources(conn: AsyncConnection, ids: list[str]) -> dict[str, _Sources]:
    a = payment_attempts.c
    rows = (await conn.execute(sa.select(payment_attempts).where(
        a.order_id.in_(ids), sa.or_(
            sa.and_(a.rail != Rail.MANUAL_TRANSFER.value,
                    a.state.in_(_GATEWAY_LIVE + _UNSETTLED)),
            sa.and_(a.rail == Rail.MANUAL_TRANSFER.value, a.state.in_(_MANUAL_LIVE)))))).all()
    found: dict[str, _Sources] = {}
    for r in rows:
        src = found.setdefault(r.order_id, _Sources(gateway=[], manual=[]))
        (src.manual if r.rail == Rail.MANUAL_TRANSFER.value else src.gateway).append(r)
    return found


def payment_pending_event_id(order_id: str) -> str:
    """``order.payment_pending`` is told once per order: it enters ``verifying`` once, and a
    breaker that flaps while it waits (each half-open round releases reads that are deferred
    again) must not repeat the news to its merchant every round."""
    return f"pending_{order_id}"


def _payment_pending(order: Any, reason: str, routes: list[str], health: SourceHealth,
                     now: datetime) -> PendingEvent:
    if reason == PROVIDER_UNAVAILABLE:
        times = [t for t in (health.retry_at(r) for r in routes) if t is not None]
        next_check = min(times) if times else None
    else:
        next_check = health.next_feed_poll(now)
    return PendingEvent(
        event_type=events.ORDER_PAYMENT_PENDING, aggregate_id=order.id,
        merchant_id=order.merchant_id, event_id=payment_pending_event_id(order.id),
        payload={**event_payload(order), "status": OrderState.VERIFYING.value,
                 "verification": pending_verification(
                     reason, routes, max(next_check, now) if next_check else None)})


async def _expire(conn: AsyncConnection, due: list[Any], *, now: datetime,
                  quarantine: timedelta) -> None:
    if not due:
        return
    ids = [o.id for o in due]
    await conn.execute(orders.update().where(orders.c.id.in_(ids))
                       .values(state=OrderState.EXPIRED.value, updated_at=now))
    live_gateway = (await conn.execute(sa.select(payment_attempts.c.id).where(
        payment_attempts.c.order_id.in_(ids),
        payment_attempts.c.state.in_([AttemptState.ACTIVE.value, AttemptState.SUPERSEDED.value]),
        payment_attempts.c.rail != Rail.MANUAL_TRANSFER.value))).scalars().all()
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


def release_cutoff(now: datetime) -> datetime:
    """An amount whose quarantine ended before this returns to the pool: the start of the WIB
    day ``now`` falls in, less the bank's clock skew. A statement that dates its lines by day
    only (00:00 WIB) lets a line pay any attempt of its day (``matcher.window_opens``), so an
    amount given out again on the day a late transfer of it was made would be settled by that
    transfer; the attempt that held it stays the one such a line finds until its day is over."""
    today = datetime.combine((now - BANK_CLOCK_SKEW).astimezone(WIB).date(), time(0),
                             tzinfo=WIB)
    return today.astimezone(UTC)


async def release_quarantined_codes(db: Database, *, now: datetime) -> int:
    """Return to the pool the transfer amounts whose quarantine ended on an earlier WIB day
    (``release_cutoff``). Rows another transaction holds are passed by (``SKIP LOCKED``) and
    released on a later sweep: a late payment being applied to one of them locks its order and
    then its attempts, and a release waiting on it while holding other attempts of that order
    deadlocked with it, which ended a statement import whole."""
    a = payment_attempts.c
    due = sa.select(a.id).where(a.holds_code, a.code_held_until < release_cutoff(now))
    if not db.is_sqlite:  # SQLite serialises writers instead
        due = due.with_for_update(skip_locked=True)
    async with db.transaction() as conn:
        result = await conn.execute(
            payment_attempts.update().where(a.id.in_(due.scalar_subquery()))
            .values(holds_code=False))
        return int(result.rowcount)
