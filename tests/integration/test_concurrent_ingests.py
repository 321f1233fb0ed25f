"""Ingests racing each other: a Moota push, a feed poll and a statement import carrying the same
bank credits at the same moment. Whichever commits first, each credit pays its order once, a
second sighting of it goes to a person as a possible duplicate (never a refund of money paid
once), and no ingest is rolled back by a deadlock.

Each race runs many rounds: before the fixes, these failed in a share of rounds (the docstrings
say how many), never in all of them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.domain.errors import LikelyDuplicate
from orchestrator.domain.ids import new_id
from orchestrator.reconciliation.fingerprint import fingerprint_moota
from orchestrator.reconciliation.moota import parse_moota_push
from orchestrator.store.database import upsert_insert
from orchestrator.store.tables import (
    evidence,
    mutations,
    orders,
    payment_attempts,
    review_cases,
)
from tests.integration.test_reconciliation import capture, moota_body
from tests.invariants import assert_rules_of_state
from tests.support import bca_statement, new_merchant


def _statement(account: str, amounts: list[int]) -> bytes:
    return bca_statement(account, [(datetime.now(UTC), f"TRSF E-BANKING CR {a}.00 ANDI", a, "CR")
                                   for a in amounts])


def _items(account: str, amounts: list[int]) -> list[dict[str, Any]]:
    """One Moota item per amount, in the order given."""
    return [json.loads(moota_body(account, a))[0] for a in amounts]


def _stagger(n: int, *, first: float = -0.0035) -> tuple[float, float]:
    """Round ``n``'s delay, in seconds, for each of two racers: the first starts ``first``
    seconds after the second (before it, if negative), then 0.7 ms later each round, over 20
    rounds, so the interleavings of their statements come up (a window a few milliseconds
    wide, where a statement import's takes longer to reach than a push's)."""
    offset = first + (n % 20) * 0.0007
    return max(offset, 0.0), max(-offset, 0.0)


async def _after(delay: float, work: Awaitable[Any]) -> Any:
    await asyncio.sleep(delay)
    return await work


def _failed(failures: list[BaseException], *outcomes: Any) -> bool:
    """Whether a racer of this round raised (kept in ``failures``): the round is counted and the
    race goes on, so a failure says in how many rounds it came up."""
    raised = [o for o in outcomes if isinstance(o, BaseException)]
    failures += raised
    return bool(raised)


async def _verdicts_and_cases(c: Container, order_id: str) -> tuple[list[str], list[str]]:
    async with c.db.read() as conn:
        verdicts = (await conn.execute(sa.select(evidence.c.verdict)
                                       .where(evidence.c.order_id == order_id))).scalars().all()
        cases = (await conn.execute(sa.select(review_cases.c.reason)
                                    .where(review_cases.c.order_id == order_id))).scalars().all()
    return sorted(verdicts), sorted(cases)


async def test_a_credit_pushed_while_its_statement_is_imported_is_paid_once(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """Regression (review D1): the push looked for the statement's copy of the credit before
    locking the order; the statement settled meanwhile, and the push then judged the same money
    a second payment and recommended refunding it (6/60 and 13/80 rounds in the review; 7 to 12
    of these 40)."""
    m = await new_merchant(container)
    wrong: list[tuple[str, list[str], list[str]]] = []
    placed: list[str] = []
    for n in range(40):
        order = await capture(client, m)
        placed.append(order["id"])
        pay = order["payment"]["transfer_amount"]
        push_delay, statement_delay = _stagger(n)
        await asyncio.gather(
            _after(push_delay, container.reconciliation.ingest_push(
                json.dumps(_items(m.account_number, [pay])).encode())),
            _after(statement_delay, container.reconciliation.import_statement(
                bank="bca", account_number=m.account_number,
                data=_statement(m.account_number, [pay]), filename=None, actor="ops:test")))
        verdicts, cases = await _verdicts_and_cases(container, order["id"])
        if (verdicts, cases) != (["settle"], ["possible_duplicate"]):
            wrong.append((order["id"], verdicts, cases))
    assert not wrong, f"{len(wrong)}/40 rounds counted one credit twice, e.g. {wrong[:2]}"
    await assert_rules_of_state(container.db, placed, settled=False)


async def test_a_push_and_a_poll_listing_the_same_credits_in_opposite_orders_both_commit(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """Regression (review D3a): each stored its items in the order listed, so a push of A, B and
    a poll of B, A (one fingerprint per Moota id) each waited for the other's uncommitted row
    and PostgreSQL rolled one back (40/40 rounds in the review; 8/8 here)."""
    m = await new_merchant(container)
    placed: list[str] = []
    failed: list[BaseException] = []
    retried = _retries(container)
    for _ in range(8):
        a, b = await capture(client, m), await capture(client, m)
        placed += [a["id"], b["id"]]
        items = _items(m.account_number, [o["payment"]["transfer_amount"] for o in (a, b)])
        pushed, polled = await asyncio.gather(
            container.reconciliation.ingest_push(json.dumps(items).encode()),
            container.reconciliation.ingest_feed(
                parse_moota_push(json.dumps(items[::-1]).encode()).mutations),
            return_exceptions=True)
        if _failed(failed, pushed, polled):
            continue
        assert (pushed.new + polled.new, pushed.duplicate + polled.duplicate) == (2, 2)
        assert pushed.matched + polled.matched == 2
    assert not failed, f"{len(failed)} ingests of 8 rounds rolled back: {failed[0]!r}"
    assert _retries(container) == retried, "a push or poll deadlocked, and was run again"
    for order_id in placed:
        assert await _verdicts_and_cases(container, order_id) == (["settle"], [])
    await assert_rules_of_state(container.db, placed, settled=False)


async def test_a_push_and_a_statement_carrying_the_same_credits_both_commit(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """Regression (review D3b): the statement's batch locks its orders in id order, the push
    locked them in the order it listed its items: a push of B, A beside a statement of A, B
    deadlocked, and a statement rolled back is lost until uploaded again (20/40 rounds in the
    review; about half of these 20)."""
    m = await new_merchant(container)
    placed: list[str] = []
    failed: list[BaseException] = []
    retried = _retries(container)
    for n in range(20):
        a, b = sorted([await capture(client, m), await capture(client, m)],
                      key=lambda o: str(o["id"]))
        placed += [a["id"], b["id"]]
        amounts = [o["payment"]["transfer_amount"] for o in (a, b)]
        push_delay, statement_delay = _stagger(n)
        pushed, imported = await asyncio.gather(
            _after(push_delay, container.reconciliation.ingest_push(
                json.dumps(_items(m.account_number, amounts[::-1])).encode())),
            _after(statement_delay, container.reconciliation.import_statement(
                bank="bca", account_number=m.account_number,
                data=_statement(m.account_number, amounts), filename=None, actor="ops:test")),
            return_exceptions=True)
        if _failed(failed, pushed, imported):
            continue
        assert pushed.new == imported.new == 2
        assert pushed.matched + imported.matched == 2  # the other copy: a possible duplicate
    assert not failed, f"{len(failed)} ingests of 20 rounds rolled back: {failed[0]!r}"
    assert _retries(container) == retried, "a push or poll deadlocked, and was run again"
    for order_id in placed:
        assert await _verdicts_and_cases(container, order_id) == (["settle"],
                                                                  ["possible_duplicate"])
    await assert_rules_of_state(container.db, placed, settled=False)


async def test_a_push_and_a_statement_naming_an_order_both_commit(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """Regression (review D3b, found fixing it): the batch locked the orders it settles itself
    in id order, then each order of a line left to the line-by-line path (one naming its order,
    here) as it came to it; beside a push locking both in id order, a statement settling B by
    amount and naming A < B in its next line deadlocked (7 to 19 of these 40 rounds)."""
    m = await new_merchant(container)
    placed: list[str] = []
    failed: list[BaseException] = []
    retried = _retries(container)
    for n in range(40):
        a, b = sorted([await capture(client, m), await capture(client, m)],
                      key=lambda o: str(o["id"]))
        placed += [a["id"], b["id"]]
        pay_a, pay_b = (o["payment"]["transfer_amount"] for o in (a, b))
        statement = bca_statement(m.account_number, [
            (datetime.now(UTC), f"TRSF E-BANKING CR {pay_b}.00 ANDI", pay_b, "CR"),
            (datetime.now(UTC), f"TRSF E-BANKING CR {a['id']} ANDI", pay_a, "CR")])
        push_delay, statement_delay = _stagger(n, first=0.004)
        pushed, imported = await asyncio.gather(
            _after(push_delay, container.reconciliation.ingest_push(
                json.dumps(_items(m.account_number, [pay_a, pay_b])).encode())),
            _after(statement_delay, container.reconciliation.import_statement(
                bank="bca", account_number=m.account_number, data=statement, filename=None,
                actor="ops:test")),
            return_exceptions=True)
        if _failed(failed, pushed, imported):
            continue
        assert pushed.matched + imported.matched == 2  # the other copy: a possible duplicate
    assert not failed, f"{len(failed)} ingests of 40 rounds rolled back: {failed[0]!r}"
    assert _retries(container) == retried, "a push or poll deadlocked, and was run again"
    for order_id in placed:
        assert await _verdicts_and_cases(container, order_id) == (["settle"],
                                                                  ["possible_duplicate"])
    await assert_rules_of_state(container.db, placed, settled=False)


async def test_a_statement_taking_back_a_payment_beside_a_push_reaching_it_both_commit(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """Regression: the batch locked the orders it settles up front, in id order, but an order
    its debit may flag (paid by an earlier credit of the debit's amount) only at the end. Order
    A < B, A paid: a statement of a debit of A's amount and a credit paying B held B while it
    settled, then asked for A; a push of the same kind of lines had locked A and waited for B.
    A deadlock; when the import had held B for longer than ``deadlock_timeout`` (a large file)
    PostgreSQL ended the import, which is not run again (5/5 rounds before the fix; raced
    without it, 40 staggered rounds ended the push and ran it again 15 times). A third
    session holds B's attempt, so the import waits with its orders locked while the push locks
    what it reaches and then waits too, longer than ``deadlock_timeout``: that interleaving,
    every round."""
    m = await new_merchant(container)
    placed: list[str] = []
    failed: list[BaseException] = []
    retried = _retries(container)
    patience = await _deadlock_timeout(container)
    for _ in range(5):
        a, b = sorted([await capture(client, m), await capture(client, m)],
                      key=lambda o: str(o["id"]))
        placed += [a["id"], b["id"]]
        pay_a, pay_b = (o["payment"]["transfer_amount"] for o in (a, b))
        paid = await container.reconciliation.ingest_push(
            json.dumps(_items(m.account_number, [pay_a])).encode())
        assert paid.matched == 1
        taken_back = dict(_items(m.account_number, [pay_a])[0], type="DB", description="KOREKSI")
        push = json.dumps([taken_back, *_items(m.account_number, [pay_b])]).encode()
        statement = bca_statement(m.account_number, [
            (datetime.now(UTC), "KOREKSI TRSF CR ANDI", pay_a, "DB"),
            (datetime.now(UTC), f"TRSF E-BANKING CR {pay_b}.00 ANDI", pay_b, "CR")])
        async with container.db.engine.connect() as other:
            held = await other.begin()
            await other.execute(sa.select(payment_attempts.c.id)
                                .where(payment_attempts.c.order_id == b["id"]).with_for_update())
            imported = asyncio.create_task(container.reconciliation.import_statement(
                bank="bca", account_number=m.account_number, data=statement, filename=None,
                actor="ops:test"))
            await _until_waiting_for_a_lock(container)  # the import, for B's attempt
            pushed = asyncio.create_task(container.reconciliation.ingest_push(push))
            await _until_waiting_for_a_lock(container, sessions=2)
            await asyncio.sleep(patience + 0.2)  # the waiting push has looked for a deadlock
            await held.rollback()
        outcomes = await asyncio.gather(imported, pushed, return_exceptions=True)
        if _failed(failed, *outcomes):
            continue
        by_import, by_push = outcomes
        assert (by_import.matched, by_import.possible_reversals) == (1, 1)
        assert (by_push.matched, by_push.possible_reversals) == (0, 0)  # B paid, A taken back
    assert not failed, f"{len(failed)} ingests of 5 rounds rolled back: {failed[0]!r}"
    assert _retries(container) == retried, "a push or poll deadlocked, and was run again"
    for a_id, b_id in zip(placed[::2], placed[1::2], strict=True):
        assert await _verdicts_and_cases(container, a_id) == (["settle"], ["possible_reversal"])
        assert await _verdicts_and_cases(container, b_id) == (["settle"], ["possible_duplicate"])
    await assert_rules_of_state(container.db, placed, settled=False)


async def test_a_push_rolled_back_to_break_a_deadlock_is_ingested_again(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """Regression (review D3): a push PostgreSQL rolled back was answered 503, and lost unless
    Moota sent it again. Here a writer that locks out of order (the order, then the push's own
    mutation row) makes the deadlock every time; the push, waiting first, is the one ended."""
    m = await new_merchant(container)
    order = await capture(client, m)
    item = _items(m.account_number, [order["payment"]["transfer_amount"]])[0]
    retried, counted = _retries(container), _ingested(container, "push")
    async with container.db.engine.connect() as other:
        writer = await other.begin()
        await other.execute(sa.select(orders.c.id).where(orders.c.id == order["id"])
                            .with_for_update())
        push = asyncio.create_task(container.reconciliation.ingest_push(json.dumps([item])
                                                                         .encode()))
        await _until_waiting_for_a_lock(container)  # its row stored, the order locked by us
        row = dict(await _mutation_row(other, m.account_number, item), source="feed")
        await other.execute(upsert_insert("postgresql")(mutations).values(**row)
                            .on_conflict_do_nothing(index_elements=["fingerprint"]))
        await writer.rollback()
    report = await push
    assert (report.new, report.matched) == (1, 1)
    assert _retries(container) == retried + 1
    # The try rolled back stored nothing, so it counts nothing: one mutation came in.
    assert _ingested(container, "push") == counted + 1
    assert await _verdicts_and_cases(container, order["id"]) == (["settle"], [])


def _retries(c: Container) -> float:
    """Pushes and polls run again after a deadlock, so far: a race that passes only by them
    still deadlocked."""
    return sum(c.metrics.registry.get_sample_value(
        "lunas_mutation_ingests_retried_total", {"source": source}) or 0.0
        for source in ("push", "feed"))


async def _until_waiting_for_a_lock(c: Container, *, sessions: int = 1) -> None:
    for _ in range(500):
        async with c.db.read() as conn:
            if (await conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"))).scalar_one() >= sessions:
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {sessions} sessions ever waited for a lock")


async def _deadlock_timeout(c: Container) -> float:
    """Seconds a session waits for a lock before it looks for a deadlock, once: the one that
    waited longest breaks a cycle, unless it looked before the cycle closed."""
    async with c.db.read() as conn:
        return float((await conn.execute(sa.text(
            "SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'"))
        ).scalar_one()) / 1000


async def _mutation_row(conn: Any, account: str, item: dict[str, Any]) -> dict[str, Any]:
    """A mutation row holding the fingerprint of Moota ``item``."""
    pushed = parse_moota_push(json.dumps([item]).encode()).mutations[0]
    return {"id": new_id("mut"), "bank": "bca", "account_number": account,
            "posted_at": pushed.posted_at, "amount": pushed.amount, "direction": "CR",
            "description": pushed.description, "balance": None,
            "fingerprint": fingerprint_moota(pushed.mutation_id), "match_state": "unmatched",
            "created_at": datetime.now(UTC)}


async def test_a_statement_rolled_back_to_break_a_deadlock_is_imported_again(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """A statement import PostgreSQL ended to break a deadlock (40P01) was refused as a whole,
    and the finance person had to upload it again. Here a writer that locks out of order (an
    order the statement pays, then the account's import lock) makes the deadlock every time;
    the import, waiting first, is the one ended, and runs again: nothing of the first try was
    stored, and the fingerprints make a repeat harmless anyway."""
    m = await new_merchant(container)
    order = await capture(client, m)
    statement = _statement(m.account_number, [order["payment"]["transfer_amount"]])
    retried = _statement_retries(container)
    async with container.db.engine.connect() as other:
        writer = await other.begin()
        await other.execute(sa.select(orders.c.id).where(orders.c.id == order["id"])
                            .with_for_update())
        upload = asyncio.create_task(container.reconciliation.import_statement(
            bank="bca", account_number=m.account_number, data=statement, filename="s.csv",
            actor="finance"))
        await _until_waiting_for_a_lock(container)  # holds its account lock, waits for ours
        await other.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                            {"k": f"lunas:statement:bca:{m.account_number}"})
        await writer.rollback()
    report = await upload
    assert (report.new, report.matched, report.duplicate) == (1, 1, 0)
    assert _statement_retries(container) == retried + 1
    assert await _verdicts_and_cases(container, order["id"]) == (["settle"], [])
    async with container.db.read() as conn:
        stored = (await conn.execute(sa.select(sa.func.count()).select_from(mutations).where(
            mutations.c.account_number == m.account_number))).scalar_one()
    assert stored == 1


def _ingested(c: Container, source: str) -> float:
    return c.metrics.registry.get_sample_value(
        "lunas_mutations_ingested_total", {"source": source, "result": "new"}) or 0.0


def _statement_retries(c: Container) -> float:
    return c.metrics.registry.get_sample_value(
        "lunas_mutation_ingests_retried_total", {"source": "statement"}) or 0.0


async def test_a_person_matching_one_copy_of_a_credit_while_an_import_matches_another_pays_once(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """A person matches the Moota copy of a credit (waiting for them: it names another order
    too) to the order it pays, while a statement import matches the bank's own copy to the same
    order. Whichever commits first, the order is paid once and the other copy is a possible
    duplicate; before the fix, every round the import won made the manual match a second
    payment, with a refund recommended for money received once."""
    m = await new_merchant(container)
    wrong: list[tuple[str, list[str], list[str]]] = []
    failed: list[BaseException] = []
    placed: list[str] = []
    for n in range(20):
        order, other = await capture(client, m), await capture(client, m)
        placed += [order["id"], other["id"]]
        pay = order["payment"]["transfer_amount"]
        [item] = _items(m.account_number, [pay])
        item["description"] = f"TRSF E-BANKING CR {other['id']} ANDI"
        assert (await container.reconciliation.ingest_push(
            json.dumps([item]).encode())).ambiguous == 1
        async with container.db.read() as conn:
            copy = (await conn.execute(sa.select(mutations.c.id).where(
                mutations.c.fingerprint == fingerprint_moota(item["mutation_id"])))).scalar_one()
        # From before the import to well after it: both orders and the lock waits between.
        match_delay, statement_delay = n * 0.006, 0.0
        matched, imported = await asyncio.gather(
            _after(match_delay, container.reconciliation.manual_match(
                mutation_id=copy, order_id=order["id"], actor="ops:test", reason="proof")),
            _after(statement_delay, container.reconciliation.import_statement(
                bank="bca", account_number=m.account_number,
                data=_statement(m.account_number, [pay]), filename=None, actor="ops:test")),
            return_exceptions=True)
        if isinstance(matched, LikelyDuplicate):
            matched = None
        if _failed(failed, matched, imported):
            continue
        verdicts, cases = await _verdicts_and_cases(container, order["id"])
        if (verdicts, cases) != (["settle"], ["possible_duplicate"]):
            wrong.append((order["id"], verdicts, cases))
    assert not failed, f"{len(failed)} of 20 rounds raised: {failed[0]!r}"
    assert not wrong, f"{len(wrong)}/20 rounds counted one credit twice, e.g. {wrong[:2]}"
    await assert_rules_of_state(container.db, placed, settled=False)
