"""The rules of state (ARCHITECTURE.md §3), checked from the database after a game day or a
chaos-style test: what every run must leave true whatever the providers, processes and servers did.

``check_rules_of_state`` reports; it does not raise, so an experiment can print every broken rule
before it exits non-zero. Tests use ``tests/invariants.assert_rules_of_state``, which asserts it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.clock import WIB
from orchestrator.domain.events import ORDER_PAID
from orchestrator.domain.order import (
    TERMINAL_ORDER_STATES,
    AttemptState,
    OrderState,
    PaymentVerdict,
    RecommendedAction,
    ReviewReason,
)
from orchestrator.store.database import Database
from orchestrator.store.tables import (
    evidence,
    mutations,
    orders,
    outbox,
    payment_attempts,
    review_cases,
)

# Where every order must end once a run is over: terminal, or with a person (and a reason).
SETTLED_ENDS = frozenset(s.value for s in TERMINAL_ORDER_STATES | {OrderState.NEEDS_REVIEW})
_PAID = OrderState.PAID.value


@dataclass
class RulesReport:
    by_state: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


async def check_rules_of_state(db: Database, acknowledged: Iterable[str], *,
                               settled: bool = True) -> RulesReport:
    """Rules 1, 2, 4, 5 and 6 for the orders a client saw acknowledged.

    ``settled=False`` skips the check that every order ended (for one in the middle of a run)."""
    ids = sorted(set(acknowledged))
    report = RulesReport()
    bad = report.violations
    async with db.read() as conn:
        found = {}
        for chunk in _chunks(ids, 5_000):
            for r in await conn.execute(
                    sa.select(orders.c.id, orders.c.state, orders.c.paid_at,
                              orders.c.review_reason).where(orders.c.id.in_(chunk))):
                found[r.id] = r
        # Rule 1: an acknowledged order is never lost.
        lost = [i for i in ids if i not in found]
        if lost:
            bad.append(f"rule 1: {len(lost)} acknowledged orders lost, e.g. {lost[:3]}")
        # Rule 2: settled at most once. Every path into paid (evidence, a person honouring a
        # review) writes exactly one order.paid event in its transaction, and nothing leaves
        # paid: so one event per paid order and none for any other (rule 5 too).
        settles: Counter[str] = Counter()
        paid_attempts: Counter[str] = Counter()
        paid_events: Counter[str] = Counter()
        for chunk in _chunks(ids, 5_000):
            settles.update((await conn.execute(sa.select(evidence.c.order_id).where(
                evidence.c.order_id.in_(chunk),
                evidence.c.verdict == PaymentVerdict.SETTLE.value))).scalars().all())
            paid_attempts.update((await conn.execute(sa.select(payment_attempts.c.order_id).where(
                payment_attempts.c.order_id.in_(chunk),
                payment_attempts.c.state == AttemptState.PAID.value))).scalars().all())
            paid_events.update((await conn.execute(sa.select(outbox.c.aggregate_id).where(
                outbox.c.event_type == ORDER_PAID,
                outbox.c.aggregate_id.in_(chunk)))).scalars().all())
        # Rule 4's one exception: a person honoured an order whose payment no source could
        # confirm in time (audited); Lunas cannot say which instrument the money reached.
        unproven = [o for o, r in found.items() if r.state == _PAID and paid_attempts[o] < 1
                    and r.review_reason == ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value]
        honoured: set[str] = set()
        for chunk in _chunks(unproven, 5_000):
            honoured.update((await conn.execute(sa.select(review_cases.c.order_id).where(
                review_cases.c.order_id.in_(chunk),
                review_cases.c.reason == ReviewReason.VERIFICATION_WINDOW_EXHAUSTED.value,
                review_cases.c.resolution == RecommendedAction.HONOUR.value))).scalars().all())
        twice = sorted({o for o, n in settles.items() if n > 1}
                       | {o for o, n in paid_events.items() if n > 1})
        if twice:
            bad.append(f"rule 2: {len(twice)} orders settled more than once, e.g. {twice[:3]}")
        for order_id, row in found.items():
            if row.state == _PAID and row.paid_at is None:
                bad.append(f"rule 2: {order_id} paid without paid_at")
            if row.state == _PAID and paid_attempts[order_id] < 1 and order_id not in honoured:
                bad.append(f"rule 4: {order_id} paid with no paid attempt")
            if row.state != _PAID and paid_events[order_id]:
                bad.append(f"rule 5: {order_id} told the merchant order.paid but is {row.state}")
            if row.state == OrderState.NEEDS_REVIEW.value and not row.review_reason:
                bad.append(f"rule 6: {order_id} in review without a reason")
        # Rule 2 for mutations: a mutation names one order (one column), so what can go wrong is
        # the evidence of applying it and the mutation row disagreeing on which order it paid.
        m, e = mutations.c, evidence.c
        disagree: list[Any] = []
        for chunk in _chunks(ids, 5_000):
            disagree += (await conn.execute(
                sa.select(e.unique_key, e.order_id, m.order_id.label("mutation_order"))
                .select_from(evidence.outerjoin(
                    mutations, e.unique_key == sa.literal("mutation:") + m.id))
                .where(e.unique_key.like("mutation:%"),
                       sa.or_(e.order_id.in_(chunk), m.order_id.in_(chunk)),
                       sa.or_(m.id.is_(None), e.order_id.is_distinct_from(m.order_id))))).all()
        if disagree:
            examples = [(r.unique_key, r.order_id, r.mutation_order) for r in disagree[:3]]
            bad.append(f"rule 2: {len(disagree)} mutations whose evidence names another order, "
                       f"e.g. {examples}")
        twice_counted = await _one_transfer_counted_twice(conn, ids)
        if twice_counted:
            bad.append(f"rule 2: {len(twice_counted)} credits counted as a second payment of "
                       f"their own transfer, e.g. {twice_counted[:3]}")
        # Rule 5: every settled order told the merchant, through the outbox, in its transaction.
        silent = [o for o, r in found.items() if r.state == _PAID and not paid_events[o]]
        if silent:
            bad.append(f"rule 5: {len(silent)} paid orders with no {ORDER_PAID} event, "
                       f"e.g. {silent[:3]}")
    report.by_state = dict(Counter(r.state for r in found.values()))
    if settled:  # Rule 6: nothing waits forever silently.
        stuck = [i for i, r in found.items() if r.state not in SETTLED_ENDS]
        if stuck:
            bad.append(f"rule 6: {len(stuck)} orders neither terminal nor in review "
                       f"({report.by_state}), e.g. {stuck[:3]}")
    return report


async def _one_transfer_counted_twice(conn: AsyncConnection, ids: list[str]) -> list[str]:
    """Mutations the matcher judged a second payment of an order that another source's copy of
    the same transfer (same account, amount and WIB day: ``_seen_from_another_source``'s twin)
    had settled: one payment counted twice, its refund recommended.

    Precise, not a guess: the matcher asks for a twin under the order's lock before settling,
    and a twin makes the copy a possible duplicate, never a payment; so a matcher's second
    payment beside a settling twin means the question was answered without the lock. A copy a
    person matched by hand is that person's decision, and not counted."""
    e, m = evidence.c, mutations.c
    seen: list[Any] = []
    for chunk in _chunks(ids, 5_000):
        seen += (await conn.execute(
            sa.select(e.order_id, e.verdict, e.details, m.id, m.source, m.account_number,
                      m.amount, m.posted_at)
            .select_from(evidence.join(mutations, e.unique_key == sa.literal("mutation:") + m.id))
            .where(e.order_id.in_(chunk), e.verdict.in_([PaymentVerdict.SETTLE.value,
                                                          PaymentVerdict.SECOND_PAYMENT.value]))
        )).all()

    def transfer(r: Any) -> tuple[str, str, int, date]:
        return r.order_id, r.account_number, r.amount, r.posted_at.astimezone(WIB).date()

    settled_by: dict[tuple[str, str, int, date], set[str]] = {}
    for r in seen:
        if r.verdict == PaymentVerdict.SETTLE.value:
            settled_by.setdefault(transfer(r), set()).add(r.source)
    return sorted(
        r.id for r in seen
        if r.verdict == PaymentVerdict.SECOND_PAYMENT.value
        and (r.details or {}).get("matched_by") == "matcher"
        and settled_by.get(transfer(r), set()) - {r.source})


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
