"""The rules of state (ARCHITECTURE.md §3), checked from the database at the end of a chaos-style
test: what every experiment must leave true whatever the providers did."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import sqlalchemy as sa

from orchestrator.domain.order import PaymentVerdict
from orchestrator.store.database import Database
from orchestrator.store.tables import evidence, mutations, orders, payment_attempts

SETTLED_ENDS = ("paid", "expired", "cancelled", "refunded", "needs_review")


async def assert_rules_of_state(db: Database, acknowledged: Iterable[str], *,
                                settled: bool = True) -> dict[str, int]:
    """Rules 1, 2, 4 and 6 for the orders a client saw acknowledged; returns orders by state.

    ``settled=False`` skips rule 6 (for a check in the middle of a run)."""
    ids = sorted(set(acknowledged))
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(orders.c.id, orders.c.state, orders.c.paid_at,
                                             orders.c.review_reason)
                                   .where(orders.c.id.in_(ids)))).all()
        found = {r.id: r for r in rows}
        # Rule 1: an acknowledged order is never lost.
        lost = [i for i in ids if i not in found]
        assert not lost, f"acknowledged orders lost: {lost[:5]}"
        # Rule 2: an order is settled at most once; evidence applied once (unique key, so each
        # row is one observation); a mutation is matched to at most one order.
        settles = Counter((await conn.execute(
            sa.select(evidence.c.order_id).where(
                evidence.c.order_id.in_(ids),
                evidence.c.verdict == PaymentVerdict.SETTLE.value))).scalars().all())
        twice = [o for o, n in settles.items() if n > 1]
        assert not twice, f"orders settled more than once: {twice[:5]}"
        paid_attempts = Counter((await conn.execute(
            sa.select(payment_attempts.c.order_id).where(
                payment_attempts.c.order_id.in_(ids),
                payment_attempts.c.state == "paid"))).scalars().all())
        for order_id, row in found.items():
            if row.state == "paid":
                assert row.paid_at is not None, f"{order_id} paid without paid_at"
                assert paid_attempts[order_id] >= 1, f"{order_id} paid with no paid attempt"
            if row.state == "needs_review":
                assert row.review_reason, f"{order_id} in review without a reason"
        evidence_per_mutation = Counter((await conn.execute(
            sa.select(evidence.c.unique_key).where(evidence.c.unique_key.like("mutation:%"))
        )).scalars().all())
        assert all(n == 1 for n in evidence_per_mutation.values())
        # A mutation names one order in one column; check each matched one names a real order.
        dangling = (await conn.execute(sa.select(sa.func.count()).select_from(
            mutations.outerjoin(orders, orders.c.id == mutations.c.order_id)).where(
            mutations.c.order_id.is_not(None), orders.c.id.is_(None)))).scalar_one()
        assert dangling == 0
    by_state = Counter(r.state for r in rows)
    if settled:  # Rule 6: nothing waits forever silently.
        stuck = [i for i, r in found.items() if r.state not in SETTLED_ENDS]
        assert not stuck, f"orders neither terminal nor in review: {by_state}"
    return dict(by_state)
