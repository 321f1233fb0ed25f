"""The rules of state (ARCHITECTURE.md §3), checked from the database after a game day or a
chaos-style test: what every run must leave true whatever the providers, processes and servers did.

``check_rules_of_state`` reports; it does not raise, so an experiment can print every broken rule
before it exits non-zero. Tests use ``tests/invariants.assert_rules_of_state``, which asserts it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa

from orchestrator.domain.order import PaymentVerdict
from orchestrator.store.database import Database
from orchestrator.store.tables import evidence, mutations, orders, outbox, payment_attempts

SETTLED_ENDS = ("paid", "expired", "cancelled", "refunded", "needs_review")


@dataclass
class RulesReport:
    checked: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self) -> str:
        states = ", ".join(f"{k} {v}" for k, v in sorted(self.by_state.items()))
        verdict = "all hold" if self.ok else f"{len(self.violations)} BROKEN"
        return f"{self.checked} acknowledged orders ({states}); rules of state: {verdict}"


async def check_rules_of_state(db: Database, acknowledged: Iterable[str], *,
                               settled: bool = True) -> RulesReport:
    """Rules 1, 2, 4, 5 and 6 for the orders a client saw acknowledged.

    ``settled=False`` skips rule 6 (for a check in the middle of a run)."""
    ids = sorted(set(acknowledged))
    report = RulesReport(checked=len(ids))
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
        # Rule 2: settled at most once; evidence applied once (a unique key, so each row is one
        # observation); a mutation matched to at most one order.
        settles: Counter[str] = Counter()
        paid_attempts: Counter[str] = Counter()
        for chunk in _chunks(ids, 5_000):
            settles.update((await conn.execute(sa.select(evidence.c.order_id).where(
                evidence.c.order_id.in_(chunk),
                evidence.c.verdict == PaymentVerdict.SETTLE.value))).scalars().all())
            paid_attempts.update((await conn.execute(sa.select(payment_attempts.c.order_id).where(
                payment_attempts.c.order_id.in_(chunk),
                payment_attempts.c.state == "paid"))).scalars().all())
        twice = [o for o, n in settles.items() if n > 1]
        if twice:
            bad.append(f"rule 2: {len(twice)} orders settled more than once, e.g. {twice[:3]}")
        for order_id, row in found.items():
            if row.state == "paid" and row.paid_at is None:
                bad.append(f"rule 2: {order_id} paid without paid_at")
            if row.state == "paid" and paid_attempts[order_id] < 1:
                bad.append(f"rule 4: {order_id} paid with no paid attempt")
            if row.state == "needs_review" and not row.review_reason:
                bad.append(f"rule 6: {order_id} in review without a reason")
        per_mutation = Counter((await conn.execute(
            sa.select(evidence.c.unique_key).where(evidence.c.unique_key.like("mutation:%"))
        )).scalars().all())
        reused = [k for k, n in per_mutation.items() if n > 1]
        if reused:
            bad.append(f"rule 2: {len(reused)} mutations applied more than once")
        dangling = (await conn.execute(sa.select(sa.func.count()).select_from(
            mutations.outerjoin(orders, orders.c.id == mutations.c.order_id)).where(
            mutations.c.order_id.is_not(None), orders.c.id.is_(None)))).scalar_one()
        if dangling:
            bad.append(f"rule 2: {dangling} mutations matched to an order that does not exist")
        # Rule 5: every settled order told the merchant, through the outbox, in its transaction.
        paid = [o for o, r in found.items() if r.state == "paid"]
        told: set[str] = set()
        for chunk in _chunks(paid, 5_000):
            told.update((await conn.execute(sa.select(outbox.c.aggregate_id).where(
                outbox.c.event_type == "order.paid",
                outbox.c.aggregate_id.in_(chunk)))).scalars().all())
        silent = [o for o in paid if o not in told]
        if silent:
            bad.append(f"rule 5: {len(silent)} paid orders with no order.paid event, "
                       f"e.g. {silent[:3]}")
    report.by_state = dict(Counter(r.state for r in found.values()))
    if settled:  # Rule 6: nothing waits forever silently.
        stuck = [i for i, r in found.items() if r.state not in SETTLED_ENDS]
        if stuck:
            bad.append(f"rule 6: {len(stuck)} orders neither terminal nor in review "
                       f"({report.by_state}), e.g. {stuck[:3]}")
    return report


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
