"""The rules-of-state check (chaos/invariants.py) that game days and chaos-style tests end with
notices each rule broken: a real run is made, one row is broken by hand, the report names it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from chaos.invariants import check_rules_of_state
from orchestrator.bootstrap import Container
from orchestrator.store.tables import evidence, mutations, orders, outbox, payment_attempts
from tests.support import bca_statement, new_merchant, new_ops_token, order_body


@dataclass(frozen=True)
class Run:
    paid: str
    other_paid: str
    open: str

    @property
    def ids(self) -> list[str]:
        return [self.paid, self.other_paid, self.open]


@pytest.fixture
async def run(client: httpx.AsyncClient, container: Container) -> Run:
    """Three manual-transfer orders: two paid by a statement import, one still open."""
    shop = await new_merchant(container)
    ops = {"Authorization": f"Bearer {await new_ops_token(container)}"}
    placed = []
    for _ in range(3):
        r = await client.post("/v1/orders", json=order_body(f"INV-{uuid.uuid4().hex[:10]}"),
                              headers={**shop.headers, "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 201, r.text
        placed.append(r.json())
    now = datetime.now(UTC)
    lines = [(now, f"TRSF E-BANKING CR {o['payment']['transfer_amount']}.00 ANDI",
              o["payment"]["transfer_amount"], "CR") for o in placed[:2]]
    r = await client.post("/v1/mutations/statements", headers=ops,
                          files={"file": ("mutasi.csv", bca_statement(shop.account_number, lines),
                                          "text/csv")},
                          data={"bank": "bca", "account_number": shop.account_number})
    assert r.status_code == 201 and r.json()["matched"] == 2, r.text
    return Run(paid=placed[0]["id"], other_paid=placed[1]["id"], open=placed[2]["id"])


async def _change(container: Container, statement: Any) -> None:
    async with container.db.transaction() as conn:
        await conn.execute(statement)


async def _second_paid_event(c: Container, run: Run) -> None:
    async with c.db.transaction() as conn:
        row = (await conn.execute(sa.select(outbox).where(
            outbox.c.aggregate_id == run.paid, outbox.c.event_type == "order.paid"))).one()
        copy = {k: v for k, v in row._mapping.items() if k != "id"}
        copy["event_id"] = f"evt_{uuid.uuid4().hex}"
        await conn.execute(outbox.insert().values(**copy))


async def _no_paid_event(c: Container, run: Run) -> None:
    await _change(c, outbox.delete().where(outbox.c.aggregate_id == run.paid,
                                           outbox.c.event_type == "order.paid"))


async def _mutation_moved(c: Container, run: Run) -> None:
    await _change(c, mutations.update().where(mutations.c.order_id == run.paid)
                  .values(order_id=run.other_paid))


async def _evidence_moved(c: Container, run: Run) -> None:
    """The evidence of one payment rewritten onto the other paid order (and its attempt: the
    database refuses evidence pairing an order with another order's attempt)."""
    async with c.db.transaction() as conn:
        other_attempt = (await conn.execute(sa.select(payment_attempts.c.id).where(
            payment_attempts.c.order_id == run.other_paid))).scalar_one()
        await conn.execute(evidence.update().where(
            evidence.c.order_id == run.paid, evidence.c.unique_key.like("mutation:%"))
            .values(order_id=run.other_paid, attempt_id=other_attempt))


async def _push_copy_judged(c: Container, run: Run, *, matched_by: str) -> None:
    """The Moota push's copy of the credit that paid ``run.paid`` (the statement's line: same
    account, amount and day, its own fingerprint), applied to the paid order as a second
    payment by ``matched_by``."""
    async with c.db.transaction() as conn:
        line = (await conn.execute(sa.select(mutations).where(
            mutations.c.order_id == run.paid))).one()
        attempt = (await conn.execute(sa.select(evidence.c.attempt_id).where(
            evidence.c.unique_key == f"mutation:{line.id}"))).scalar_one()
        copy = {**line._mapping, "id": f"mut_{uuid.uuid4().hex[:24]}", "source": "push",
                "fingerprint": uuid.uuid4().hex, "statement_id": None, "matched_by": matched_by}
        await conn.execute(mutations.insert().values(**copy))
        await conn.execute(evidence.insert().values(
            unique_key=f"mutation:{copy['id']}", kind="mutation", order_id=run.paid,
            attempt_id=attempt, amount=line.amount, verdict="second_payment",
            observed_at=line.posted_at, recorded_at=line.posted_at,
            details={"mutation_id": copy["id"], "matched_by": matched_by}))


async def _one_credit_counted_twice(c: Container, run: Run) -> None:
    await _push_copy_judged(c, run, matched_by="matcher")


async def _review_without_reason(c: Container, run: Run) -> None:
    await _change(c, orders.update().where(orders.c.id == run.open)
                  .values(state="needs_review", review_reason=None))


async def _nothing(c: Container, run: Run) -> None:
    return None


Break = Callable[[Container, Run], Awaitable[None]]


async def test_a_clean_run_reports_every_rule_holding(run: Run, container: Container) -> None:
    report = await check_rules_of_state(container.db, run.ids, settled=False)
    assert report.ok, report.violations
    assert report.by_state == {"paid": 2, "awaiting_payment": 1}


@pytest.mark.parametrize(("broken", "expected"), [
    (_second_paid_event, "rule 2: 1 orders settled more than once"),
    (_evidence_moved, "rule 2: 1 orders settled more than once"),
    (_no_paid_event, "rule 5: 1 paid orders with no order.paid event"),
    (_mutation_moved, "mutations whose evidence names another order"),
    (_evidence_moved, "mutations whose evidence names another order"),
    (_one_credit_counted_twice, "rule 2: 1 credits counted as a second payment of their own"),
    (_review_without_reason, "in review without a reason"),
    (_nothing, "rule 6: 1 orders neither terminal nor in review"),
])
async def test_a_broken_rule_is_reported(run: Run, container: Container, broken: Break,
                                         expected: str) -> None:
    await broken(container, run)
    settled = broken is _nothing
    report = await check_rules_of_state(container.db, run.ids, settled=settled)
    assert not report.ok
    assert any(expected in v for v in report.violations), report.violations


async def test_an_acknowledged_order_missing_from_the_database_is_reported_lost(
    run: Run, container: Container,
) -> None:
    report = await check_rules_of_state(container.db, [*run.ids, "ord_NEVERSTORED"],
                                        settled=False)
    assert [v for v in report.violations if v.startswith("rule 1")] == [
        "rule 1: 1 acknowledged orders lost, e.g. ['ord_NEVERSTORED']"]


async def test_a_copy_a_person_matched_as_a_second_payment_is_their_decision(
    run: Run, container: Container,
) -> None:
    await _push_copy_judged(container, run, matched_by="ops:finance")
    report = await check_rules_of_state(container.db, run.ids, settled=False)
    assert report.ok, report.violations
