"""A debit that may take back a payment: the bank reversing a credit that paid an order, or the
merchant refunding the customer by hand. The order stays as it is; a person and the merchant are
told (a review case, ``review_case.opened``), so goods are not sent for money that left.

Real PostgreSQL; statements through the batch path and line by line, pushes through the API.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.domain.clock import WIB
from orchestrator.store.tables import mutations, orders, outbox, review_cases
from tests.integration.test_reconciliation import capture, unmatched_credit, upload
from tests.integration.test_reconciliation_batch import line_by_line
from tests.support import ShopFixture, bca_statement, new_merchant, new_ops_token, signed_push


@pytest.fixture(scope="module")
async def ops(container: Container) -> dict[str, str]:
    return {"Authorization": f"Bearer {await new_ops_token(container)}"}


def today() -> datetime:
    return datetime.now(UTC)


async def import_statement(client: httpx.AsyncClient, container: Container,
                           ops: dict[str, str], m: ShopFixture, statement: bytes, *,
                           batch: bool) -> dict[str, Any]:
    """The upload's reply (the batch path, on PostgreSQL), or the same counts line by line."""
    if batch:
        return dict((await upload(client, ops, m, statement)).json())
    imported = await line_by_line(container).import_statement(
        bank="bca", account_number=m.account_number, data=statement, filename=None,
        actor="test")
    return {"matched": imported.matched, "possible_reversals": imported.possible_reversals}


async def cases_of(container: Container, order_id: str) -> list[Any]:
    async with container.db.read() as conn:
        return list((await conn.execute(sa.select(review_cases).where(
            review_cases.c.order_id == order_id))).all())


async def state_of(container: Container, order_id: str) -> str:
    async with container.db.read() as conn:
        return str((await conn.execute(sa.select(orders.c.state).where(
            orders.c.id == order_id))).scalar_one())


async def test_a_debit_of_a_paid_credits_amount_opens_a_case_and_tells_the_merchant(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    paid = await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "TRSF E-BANKING CR ANDI", pay, "CR")]))
    assert paid.json()["matched"] == 1
    assert await state_of(container, order["id"]) == "paid"

    # The next statement: the bank takes the money back, and a debit of another amount.
    taken = await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "KOREKSI TRSF CR ANDI", pay, "DB"),
        (today(), "BIAYA ADM", 5_000, "DB")]))
    assert taken.status_code == 201, taken.text
    report = taken.json()
    assert (report["possible_reversals"], report["needs_review"], report["ignored_debits"]) == (
        1, 1, 2)
    assert await state_of(container, order["id"]) == "paid"  # a person decides, not the matcher
    [case] = await cases_of(container, order["id"])
    assert (case.reason, case.recommended_action, case.amount, case.state) == (
        "possible_reversal", "check_with_bank", pay, "open")
    async with container.db.read() as conn:
        debit = (await conn.execute(sa.select(mutations).where(
            mutations.c.id == case.mutation_id))).one()
        told = (await conn.execute(sa.select(outbox.c.payload).where(
            outbox.c.aggregate_id == order["id"],
            outbox.c.event_type == "review_case.opened"))).scalars().all()
    assert (debit.direction, debit.match_state, debit.order_id) == ("DB", "reversal", order["id"])
    assert [(p["reason"], p["case_id"], p["debit_mutation_id"]) for p in told] == [
        ("possible_reversal", case.id, debit.id)]
    unmatched = (await client.get("/v1/reconciliation/unmatched", headers=ops,
                                  params={"account_number": m.account_number})).json()["data"]
    assert unmatched == []
    await container.state_sampler.refresh(force=True)  # what LunasPossibleReversal reads
    assert (container.metrics.state_registry.get_sample_value(
        "lunas_review_cases_open", {"reason": "possible_reversal"}) or 0) >= 1

    # A second debit of that amount (a refund by hand as well?) takes back nothing more.
    again = await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "TRSF KE ANDI", pay, "DB")]))
    assert again.json()["possible_reversals"] == 0
    assert len(await cases_of(container, order["id"])) == 1


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "line-by-line"])
async def test_a_credit_and_its_reversal_in_one_statement(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], batch: bool,
) -> None:
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    statement = bca_statement(m.account_number, [
        (today(), "TRSF E-BANKING CR ANDI", pay, "CR"),
        (today(), "KOREKSI TRSF CR ANDI", pay, "DB")])
    report = await import_statement(client, container, ops, m, statement, batch=batch)
    assert (report["matched"], report["possible_reversals"]) == (1, 1)
    assert [c.reason for c in await cases_of(container, order["id"])] == ["possible_reversal"]


async def test_debits_that_cannot_be_a_reversal_are_ignored_as_before(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    """Another account's credit, a credit paid eight days before, an amount no order had."""
    m, other = await new_merchant(container), await new_merchant(container)
    old, elsewhere = await capture(client, m), await capture(client, other, 175_000)
    for shop, o in ((m, old), (other, elsewhere)):
        r = await upload(client, ops, shop, bca_statement(shop.account_number, [
            (today(), "TRSF CR", o["payment"]["transfer_amount"], "CR")]))
        assert r.json()["matched"] == 1
    async with container.db.transaction() as conn:  # the first credit was posted 8 days ago
        await conn.execute(mutations.update().where(
            mutations.c.account_number == m.account_number).values(
            posted_at=today() - timedelta(days=8)))
    report = (await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "TRSF KE", old["payment"]["transfer_amount"], "DB"),
        (today(), "TRSF KE", elsewhere["payment"]["transfer_amount"], "DB"),
        (today(), "TRSF KE", 123_457, "DB")]))).json()
    assert (report["ignored_debits"], report["possible_reversals"]) == (3, 0)
    assert await cases_of(container, old["id"]) == []
    assert await cases_of(container, elsewhere["id"]) == []


async def test_a_pushed_reversal_is_caught_once_whichever_source_sees_it(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    """Moota pushes the credit and then the debit; the bank's statement later has the debit too
    (another fingerprint): one case, not two."""
    m: ShopFixture = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]

    async def push(kind: str) -> dict[str, Any]:
        return await push_one(client, container, m.account_number, pay, kind)

    assert (await push("CR"))["matched"] == 1
    assert (await push("DB"))["possible_reversals"] == 1
    later = await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "KOREKSI", pay, "DB")]))
    assert later.json()["possible_reversals"] == 0
    assert [c.reason for c in await cases_of(container, order["id"])] == ["possible_reversal"]


async def test_a_zero_window_looks_for_no_reversals(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """LUNAS_REVERSAL_WINDOW=0, for an account whose debits too often share a customer's amount."""
    from orchestrator.services.reconciliation import ReconciliationService

    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    service = ReconciliationService(container.db, clock=container.clock,
                                    metrics=container.metrics,
                                    quarantine=container.settings.unique_codes.quarantine,
                                    reversal_window=timedelta(0))
    report = await service.import_statement(
        bank="bca", account_number=m.account_number, filename=None, actor="test",
        data=bca_statement(m.account_number, [(today(), "TRSF CR", pay, "CR"),
                                              (today(), "KOREKSI", pay, "DB")]))
    assert (report.matched, report.ignored_debits, report.possible_reversals) == (1, 1, 0)
    assert await cases_of(container, order["id"]) == []


# -- found in review of 18500a7 ------------------------------------------------------------

async def push_one(client: httpx.AsyncClient, container: Container, account: str, amount: int,
                   kind: str) -> dict[str, Any]:
    r = await signed_push(client, container, [{
        "mutation_id": uuid.uuid4().hex[:11], "bank_id": "bk7Hq2Lm9Zs",
        "account_number": account,
        "date": today().astimezone(WIB).strftime("%Y-%m-%d %H:%M:%S"), "description": "TRSF",
        "amount": f"{amount}.00", "type": kind, "balance": "2150123.00"}])
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_second_copy_of_a_reversal_never_reaches_for_an_older_order(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    """Amount X paid order B two days ago and (its code free again after the quarantine) order A
    today. Moota pushes the bank's KOREKSI of A's credit; the statement lists the same debit.
    The copy skipped A, taken back already, and flagged B, whose merchant was told."""
    m = await new_merchant(container)
    a, b = await capture(client, m), await capture(client, m, 175_000)
    x = a["payment"]["transfer_amount"]
    assert (await push_one(client, container, m.account_number,
                           b["payment"]["transfer_amount"], "CR"))["matched"] == 1
    assert (await push_one(client, container, m.account_number, x, "CR"))["matched"] == 1
    async with container.db.transaction() as conn:
        await conn.execute(mutations.update().where(mutations.c.order_id == b["id"]).values(
            amount=x, posted_at=today() - timedelta(days=2)))
    assert (await push_one(client, container, m.account_number, x, "DB"))[
        "possible_reversals"] == 1
    copy = await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "KOREKSI TRSF CR", x, "DB")]))
    assert copy.json()["possible_reversals"] == 0
    assert [c.reason for c in await cases_of(container, a["id"])] == ["possible_reversal"]
    assert await cases_of(container, b["id"]) == []
    async with container.db.read() as conn:
        debits = (await conn.execute(sa.select(mutations.c.source, mutations.c.match_state,
                                               mutations.c.order_id).where(
            mutations.c.account_number == m.account_number,
            mutations.c.direction == "DB"))).all()
    assert sorted(debits) == [("push", "reversal", a["id"]), ("statement", "reversal", a["id"])]


async def test_the_same_account_number_at_another_bank_is_another_account(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    from orchestrator.store.merchants import create_merchant
    from tests.integration.test_reconciliation_batch import bri_statement

    y = await new_merchant(container, bank="bri")
    async with container.db.transaction() as conn:
        made = await create_merchant(conn, name="Toko Lain", webhook_url=None,
                                     accounts=[("bca", y.account_number, "TOKO LAIN")],
                                     now=container.clock.now())
    x = ShopFixture(made.merchant_id, made.api_key, made.webhook_secret, "bca", y.account_number)
    order = await capture(client, y)
    pay = order["payment"]["transfer_amount"]
    paid = await upload(client, ops, y, bri_statement(y.account_number, [(today(), pay)]),
                        bank="bri")
    assert paid.json()["matched"] == 1, paid.text
    other = await upload(client, ops, x, bca_statement(x.account_number, [
        (today(), "TRSF KE SUPPLIER", pay, "DB")]))
    assert other.json()["possible_reversals"] == 0
    assert await cases_of(container, order["id"]) == []


async def test_resolving_a_reversal_case_leaves_the_orders_own_review_alone(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    """An underpaid order waits in review (amount mismatch: refund); a debit of what was paid
    opens a possible reversal beside it. Honouring that case said nothing about the shortfall,
    yet it made the order paid and told the merchant so."""
    m = await new_merchant(container)
    order = await capture(client, m)
    short = order["payment"]["transfer_amount"] - 50_000
    assert (await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), f"TRSF CR {order['id'].upper()}", short, "CR")]))).json()["matched"] == 1
    assert (await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "KOREKSI", short, "DB")]))).json()["possible_reversals"] == 1
    by_reason = {c.reason: c for c in await cases_of(container, order["id"])}
    r = await client.post(f"/v1/reviews/{by_reason['possible_reversal'].id}/resolve",
                          headers=ops, json={"action": "honour", "note": "bank: no reversal"})
    assert r.status_code == 200, r.text
    assert await state_of(container, order["id"]) == "needs_review"
    r = await client.post(f"/v1/reviews/{by_reason['amount_mismatch'].id}/resolve",
                          headers=ops, json={"action": "refund", "note": "shortfall refunded"})
    assert r.status_code == 200, r.text
    assert await state_of(container, order["id"]) == "refunded"


async def test_a_debit_dated_before_the_payment_is_not_its_reversal(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    """Yesterday's statement, imported after today's payment: a payout of the same amount
    yesterday cannot have taken back a transfer made today."""
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    assert (await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "TRSF CR", pay, "CR")]))).json()["matched"] == 1
    report = (await upload(client, ops, m, bca_statement(m.account_number, [
        (today() - timedelta(days=1), "TRSF KE SUPPLIER", pay, "DB")]))).json()
    assert (report["ignored_debits"], report["possible_reversals"]) == (1, 0)


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "line-by-line"])
async def test_both_import_paths_judge_a_days_lines_alike_whatever_their_order(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], batch: bool,
) -> None:
    """A day-dated statement listing the debit before the credit of its amount: the batch,
    deciding after storing every line, flagged it; line by line, deciding in file order, did
    not. Both now decide once the whole file is stored."""
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    statement = bca_statement(m.account_number, [(today(), "TRSF KE", pay, "DB"),
                                                 (today(), "TRSF E-BANKING CR", pay, "CR")])
    report = await import_statement(client, container, ops, m, statement, batch=batch)
    assert (report["matched"], report["possible_reversals"]) == (1, 1)


async def test_a_statement_and_a_push_of_the_same_debits_in_opposite_orders_both_finish(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], pg_url: str,
) -> None:
    """Each locked its debits' orders one by one, in its own line order: a statement listing
    the corrections oldest first and a push listing them newest first deadlocked (one of them
    answered 500 and, for a statement, stored nothing). A third session holds order A's row so
    both requests queue behind it, in the interleaving that deadlocked."""
    import asyncio

    import asyncpg

    m = await new_merchant(container)
    a, b = sorted([await capture(client, m), await capture(client, m, 175_000)],
                  key=lambda o: str(o["id"]))
    xa, xb = a["payment"]["transfer_amount"], b["payment"]["transfer_amount"]
    assert (await push_one(client, container, m.account_number, xa, "CR"))["matched"] == 1
    assert (await push_one(client, container, m.account_number, xb, "CR"))["matched"] == 1
    stamp = today().astimezone(WIB).strftime("%Y-%m-%d %H:%M:%S")
    pushed: list[dict[str, object]] = [
        {"mutation_id": uuid.uuid4().hex[:11], "bank_id": "bk7Hq2Lm9Zs",
         "account_number": m.account_number, "date": stamp, "description": "KOREKSI",
         "amount": f"{amount}.00", "type": "DB", "balance": "2150123.00"} for amount in (xb, xa)]
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    blocker, admin = await asyncpg.connect(dsn), await asyncpg.connect(dsn)

    async def waiters(n: int) -> None:
        for _ in range(100):
            if await admin.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                    "AND locktype IN ('transactionid', 'tuple')") >= n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"fewer than {n} sessions waiting")

    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", a["id"])
        statement = asyncio.create_task(upload(client, ops, m, bca_statement(
            m.account_number, [(today(), "KOREKSI", xa, "DB"), (today(), "KOREKSI", xb, "DB")])))
        await waiters(1)
        push = asyncio.create_task(signed_push(client, container, pushed))
        await waiters(2)
        await held.commit()
        by_statement, by_push = await asyncio.gather(statement, push)
    finally:
        await blocker.close()
        await admin.close()
    assert (by_statement.status_code, by_push.status_code) == (201, 200), (
        by_statement.text, by_push.text)
    assert by_statement.json()["possible_reversals"] + by_push.json()["possible_reversals"] == 2
    for order in (a, b):
        assert [c.reason for c in await cases_of(container, order["id"])] == [
            "possible_reversal"]


@pytest.mark.parametrize("paid_by", ["earlier", "batch", "line-by-line"])
async def test_a_statement_locks_the_order_its_debit_may_flag_with_the_orders_it_settles(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], pg_url: str,
    paid_by: str,
) -> None:
    """The order a debit may take a payment back from is locked up front, in id order with
    every order the import settles (``_LOCK_ORDERS``), never after them: whether an earlier
    ingest matched the credit, or this statement does, through the batch or line by line (a
    credit naming its order). Locked last, it deadlocked with a push holding it and waiting
    for an order the import had settled. A third session holds the order's row; the import
    must be waiting for it in that first statement."""
    import asyncio

    import asyncpg

    from orchestrator.services.reconciliation import _LOCK_ORDERS

    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    credit = {"earlier": [], "batch": [(today(), "TRSF E-BANKING CR ANDI", pay, "CR")],
              "line-by-line": [(today(), f"TRSF CR {order['id'].upper()}", pay, "CR")]}[paid_by]
    if paid_by == "earlier":
        assert (await push_one(client, container, m.account_number, pay, "CR"))["matched"] == 1
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    blocker, admin = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", order["id"])
        statement = asyncio.create_task(upload(client, ops, m, bca_statement(
            m.account_number, [*credit, (today(), "KOREKSI TRSF CR ANDI", pay, "DB")])))
        for _ in range(100):
            waiting = await admin.fetch(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND wait_event = 'transactionid'")
            if waiting:
                break
            await asyncio.sleep(0.05)
        await held.commit()
        imported = await statement
    finally:
        await blocker.close()
        await admin.close()
    assert [w["query"] for w in waiting] == [_LOCK_ORDERS]
    assert imported.status_code == 201, imported.text
    assert imported.json()["possible_reversals"] == 1
    assert [c.reason for c in await cases_of(container, order["id"])] == ["possible_reversal"]


# -- a debit stored before the credit it takes back ----------------------------------------

async def push_at(client: httpx.AsyncClient, container: Container, account: str, amount: int,
                  kind: str, at: datetime) -> dict[str, Any]:
    """``push_one``, posted at ``at`` (Moota dates to the second, in WIB)."""
    r = await signed_push(client, container, [{
        "mutation_id": uuid.uuid4().hex[:11], "bank_id": "bk7Hq2Lm9Zs", "account_number": account,
        "date": at.astimezone(WIB).strftime("%Y-%m-%d %H:%M:%S"), "description": "TRSF",
        "amount": f"{amount}.00", "type": kind, "balance": "2150123.00"}])
    assert r.status_code == 200, r.text
    return dict(r.json())


async def debits_of(container: Container, account: str) -> dict[str, tuple[str, str | None]]:
    """Per debit on the account: its match state and the order it names."""
    async with container.db.read() as conn:
        return {r.id: (r.match_state, r.order_id) for r in await conn.execute(
            sa.select(mutations.c.id, mutations.c.match_state, mutations.c.order_id).where(
                mutations.c.account_number == account, mutations.c.direction == "DB"))}


async def told_of(container: Container, order_id: str) -> list[dict[str, Any]]:
    async with container.db.read() as conn:
        return list((await conn.execute(sa.select(outbox.c.payload).where(
            outbox.c.aggregate_id == order_id,
            outbox.c.event_type == "review_case.opened"))).scalars().all())


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "line-by-line"])
async def test_a_debit_uploaded_before_the_statement_of_its_credit_flags_the_order_once(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], batch: bool,
) -> None:
    """Finance uploads the statement with the bank's correction first, then the one with the
    transfer it corrects. The debit, stored first, found no credit to take back and was never
    looked at again: the order stayed paid for money that went back, nobody told."""
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    first = await import_statement(client, container, ops, m, bca_statement(m.account_number, [
        (today(), "KOREKSI TRSF CR ANDI", pay, "DB")]), batch=batch)
    assert first["possible_reversals"] == 0
    [debit_id] = await debits_of(container, m.account_number)

    then = await import_statement(client, container, ops, m, bca_statement(m.account_number, [
        (today(), "TRSF E-BANKING CR ANDI", pay, "CR")]), batch=batch)
    assert (then["matched"], then["possible_reversals"]) == (1, 1)
    assert await state_of(container, order["id"]) == "paid"
    [case] = await cases_of(container, order["id"])
    assert (case.reason, case.recommended_action, case.amount, case.mutation_id) == (
        "possible_reversal", "check_with_bank", pay, debit_id)
    assert await debits_of(container, m.account_number) == {debit_id: ("reversal", order["id"])}
    assert [(p["reason"], p["case_id"], p["debit_mutation_id"])
            for p in await told_of(container, order["id"])] == [
        ("possible_reversal", case.id, debit_id)]


async def test_a_pushed_debit_flags_the_credit_the_poll_catches_after_it(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """The credit's push was lost; the debit taking it back came by push; the Moota poll lists
    the credit later (newest first, in a chunk of its own)."""
    from orchestrator.reconciliation.moota import parse_moota_push

    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    paid_at = today() - timedelta(minutes=1)  # after the order; the debit an hour later
    assert (await push_at(client, container, m.account_number, pay, "DB",
                          paid_at + timedelta(hours=1)))["possible_reversals"] == 0
    polled = await container.reconciliation.ingest_feed(parse_moota_push(json.dumps([{
        "mutation_id": uuid.uuid4().hex[:11], "bank_id": "bk7Hq2Lm9Zs",
        "account_number": m.account_number,
        "date": paid_at.astimezone(WIB).strftime("%Y-%m-%d %H:%M:%S"),
        "description": "TRSF CR ANDI", "amount": f"{pay}.00", "type": "CR",
        "balance": "2150123.00"}]).encode()).mutations)
    assert (polled.matched, polled.possible_reversals, polled.needs_review) == (1, 1, 1)
    assert [c.reason for c in await cases_of(container, order["id"])] == ["possible_reversal"]
    assert list((await debits_of(container, m.account_number)).values()) == [
        ("reversal", order["id"])]
    assert len(await told_of(container, order["id"])) == 1


async def test_a_day_dated_debit_uploaded_first_flags_a_pushed_credit_of_its_day(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    """The statement dates the debit 00:00 WIB, hours before the pushed credit it takes back
    that day: from the credit's side too, a debit dated by day reaches to the end of its day."""
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    assert (await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "KOREKSI", pay, "DB")]))).json()["possible_reversals"] == 0
    assert (await push_at(client, container, m.account_number, pay, "CR", today()))[
        "possible_reversals"] == 1
    assert [c.reason for c in await cases_of(container, order["id"])] == ["possible_reversal"]


async def test_debits_stored_first_outside_the_credits_window_are_not_flagged(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """Three debits of the amount, pushed before the credit: one the window's last second after
    it (flagged), one a second later, one the day before it (neither)."""
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    paid_at = today().replace(microsecond=0)
    for at in (paid_at + timedelta(days=3), paid_at + timedelta(days=3, seconds=1),
               paid_at - timedelta(days=1)):
        assert (await push_at(client, container, m.account_number, pay, "DB", at))[
            "possible_reversals"] == 0
    async with container.db.read() as conn:
        by_time = {r.posted_at: r.id for r in await conn.execute(
            sa.select(mutations.c.id, mutations.c.posted_at).where(
                mutations.c.account_number == m.account_number))}
    report = await push_at(client, container, m.account_number, pay, "CR", paid_at)
    assert (report["matched"], report["possible_reversals"]) == (1, 1)
    assert await debits_of(container, m.account_number) == {
        by_time[paid_at + timedelta(days=3)]: ("reversal", order["id"]),
        by_time[paid_at + timedelta(days=3, seconds=1)]: ("ignored", None),
        by_time[paid_at - timedelta(days=1)]: ("ignored", None)}


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "line-by-line"])
async def test_a_debit_flagged_against_one_credit_is_not_flagged_again_by_a_later_one(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], batch: bool,
) -> None:
    """Amount Y paid order A yesterday and a debit D took it back today (A's case). A debit D2
    of Y came beside it, unclaimed; then a statement shows order B paid Y this morning, before
    both: the latest credit in either's window. D2 may take B's payment back: B's case. D stays
    A's reversal: a debit flags at most one credit, and is not moved to a later one."""
    m = await new_merchant(container)
    a, b = await capture(client, m), await capture(client, m, 175_000)
    x, y = a["payment"]["transfer_amount"], b["payment"]["transfer_amount"]
    at = today().replace(microsecond=0)
    assert (await push_at(client, container, m.account_number, x, "CR",
                          at - timedelta(minutes=2)))["matched"] == 1
    assert (await push_at(client, container, m.account_number, x, "DB", at))[
        "possible_reversals"] == 1
    [d] = await debits_of(container, m.account_number)
    assert (await push_at(client, container, m.account_number, y, "DB", at))[
        "possible_reversals"] == 0  # nothing paid y yet
    async with container.db.transaction() as conn:  # A was paid y yesterday, D took y back
        await conn.execute(mutations.update().where(mutations.c.order_id == a["id"]).values(
            amount=y))
        await conn.execute(mutations.update().where(
            mutations.c.order_id == a["id"], mutations.c.direction == "CR").values(
            posted_at=at - timedelta(days=1)))
    [d2] = set(await debits_of(container, m.account_number)) - {d}

    credit = [(at, "TRSF E-BANKING CR BUDI", y, "CR")]
    report = await import_statement(client, container, ops, m,
                                    bca_statement(m.account_number, credit), batch=batch)
    assert (report["matched"], report["possible_reversals"]) == (1, 1)
    assert await debits_of(container, m.account_number) == {
        d: ("reversal", a["id"]), d2: ("reversal", b["id"])}
    assert [c.mutation_id for c in await cases_of(container, a["id"])] == [d]
    assert [c.mutation_id for c in await cases_of(container, b["id"])] == [d2]


# -- a debit and the credit it takes back, ingested at the same moment ---------------------

def worker_relay(container: Container) -> Any:
    """The worker's relay with every handler it registers; a failed try is retried after 0.2 s."""
    from dataclasses import replace

    from orchestrator.outbox.relay import Relay
    from orchestrator.worker import relay_handlers

    return Relay(container.db.engine, relay_handlers(container, container.http),
                 replace(container.settings.outbox, backoff=(timedelta(seconds=0.2),) * 5),
                 f"test-{uuid.uuid4().hex[:6]}", container.clock)


async def relay_until_flagged(container: Container, order_id: str) -> list[Any]:
    """Run the worker's relay until the order has a case (for at most 5 s); its cases."""
    import asyncio

    relay = worker_relay(container)
    for _ in range(100):
        await relay.run_once()
        if cases := await cases_of(container, order_id):
            return cases
        await asyncio.sleep(0.05)
    return []


async def until_waiting(admin: Any, what: str, *, sessions: int = 1) -> None:
    import asyncio

    for _ in range(200):
        if await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                "current_database() AND wait_event_type = 'Lock'") >= sessions:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{what} never waited for a lock")


AUDIT_TRAIL_HELD = "LOCK TABLE audit_log IN SHARE MODE"
"""What an ingest or a manual match writes last: held, it holds them just before commit."""


@contextlib.asynccontextmanager
async def held_by_a_third_session(pg_url: str, lock: str, *args: Any
                                  ) -> AsyncIterator[tuple[Any, Any]]:
    """A third session holding ``lock`` (SQL run in its open transaction) and a fourth that
    watches who waits: yields (the held transaction, to commit when the test says; the
    watcher); both closed after."""
    import asyncpg

    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    blocker, admin = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute(lock, *args)
        yield held, admin
    finally:
        await blocker.close()
        await admin.close()


async def test_a_debit_pushed_while_a_statement_matches_its_credit_flags_the_order_once(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], pg_url: str,
) -> None:
    """The statement paying the order is held after it looked for earlier debits (none) and
    before it matches the credit (a third session holds the order); the bank's correction is
    pushed meanwhile, finds no matched credit to take back, and commits. Neither saw the other:
    the order stayed paid for money that went back, and nobody was told. The push must still
    answer at once, not wait a long import out."""
    import asyncio

    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    async with held_by_a_third_session(pg_url, "SELECT 1 FROM orders WHERE id = $1 FOR UPDATE",
                                       order["id"]) as (held, admin):
        statement = asyncio.create_task(upload(client, ops, m, bca_statement(
            m.account_number, [(today(), "TRSF E-BANKING CR ANDI", pay, "CR")])))
        await until_waiting(admin, "the statement")
        pushed = await push_at(client, container, m.account_number, pay, "DB", today())
        assert not statement.done()  # the push answered while the import held its account
        assert pushed["possible_reversals"] == 0  # the credit is not matched yet
        [debit_id] = await debits_of(container, m.account_number)
        relay = worker_relay(container)
        for _ in range(100):  # too early: judged once the import is done
            await relay.run_once()
            async with container.db.read() as conn:
                [job] = (await conn.execute(sa.select(outbox).where(
                    outbox.c.event_type == "mutations.judge_again",
                    outbox.c.aggregate_id == debit_id))).all()
            if job.attempts:
                break
            await asyncio.sleep(0.05)
        assert (job.status, job.payload["mutation_ids"]) == ("pending", [debit_id])
        assert "holds its lock" in job.last_error
        assert await cases_of(container, order["id"]) == []
        await held.commit()
        imported = await statement
    assert imported.status_code == 201, imported.text
    assert (imported.json()["matched"], imported.json()["possible_reversals"]) == (1, 0)

    [case] = await relay_until_flagged(container, order["id"])
    assert (case.reason, case.mutation_id, case.amount) == ("possible_reversal", debit_id, pay)
    assert await debits_of(container, m.account_number) == {debit_id: ("reversal", order["id"])}
    assert [p["debit_mutation_id"] for p in await told_of(container, order["id"])] == [debit_id]
    await relay_until_flagged(container, order["id"])  # anything left to judge opens nothing
    assert len(await cases_of(container, order["id"])) == 1


async def test_a_credit_pushed_while_a_statement_stores_its_debit_flags_the_order_once(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], pg_url: str,
) -> None:
    """The other way round: the statement with the correction has looked for credits it may
    take back (none matched) and is held before it commits (a third session holds the audit
    trail it writes last); the payment is pushed meanwhile, matched, and finds no debit
    stored before it (the statement's is not committed)."""
    import asyncio

    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    async with held_by_a_third_session(pg_url, AUDIT_TRAIL_HELD) as (held, admin):
        statement = asyncio.create_task(upload(client, ops, m, bca_statement(
            m.account_number, [(today(), "KOREKSI TRSF CR ANDI", pay, "DB")])))
        await until_waiting(admin, "the statement")
        pushed = await push_at(client, container, m.account_number, pay, "CR", today())
        assert not statement.done()
        assert (pushed["matched"], pushed["possible_reversals"]) == (1, 0)
        await held.commit()
        imported = await statement
    assert imported.status_code == 201, imported.text
    assert imported.json()["possible_reversals"] == 0
    [debit_id] = await debits_of(container, m.account_number)

    [case] = await relay_until_flagged(container, order["id"])
    assert (case.reason, case.mutation_id) == ("possible_reversal", debit_id)
    assert await debits_of(container, m.account_number) == {debit_id: ("reversal", order["id"])}
    assert len(await told_of(container, order["id"])) == 1


async def test_a_debit_judged_again_while_a_push_flags_it_against_a_later_credit_has_one_case(
    client: httpx.AsyncClient, container: Container, pg_url: str,
) -> None:
    """Order A was paid Y an hour ago; a debit D of Y came while another ingest held the
    account (a third session here), so it waits to be judged again. As the worker judges it
    (against A's credit, the latest it sees), the payment of Y for order B a minute ago is
    pushed: the push sees D still unclaimed (the worker has not committed) and B's credit the
    latest in D's window. Both flagged D, each on its own order: two cases for one debit, the
    debit named on the last one only. One of them must find D claimed already."""
    import asyncio

    import asyncpg

    from orchestrator.outbox.relay import OutboxEvent

    m = await new_merchant(container)
    a, b = await capture(client, m), await capture(client, m, 175_000)
    x, y = a["payment"]["transfer_amount"], b["payment"]["transfer_amount"]
    at = today().replace(microsecond=0)
    assert (await push_at(client, container, m.account_number, x, "CR",
                          at - timedelta(minutes=2)))["matched"] == 1
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    blocker, admin = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        async with blocker.transaction():  # another ingest of the account, for the push
            await blocker.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                                  f"lunas:statement:bca:{m.account_number}")
            assert (await push_at(client, container, m.account_number, y, "DB", at))[
                "possible_reversals"] == 0  # nothing paid y yet
        [debit_id] = await debits_of(container, m.account_number)
        async with container.db.transaction() as conn:  # that ingest: A was paid y an hour ago
            await conn.execute(mutations.update().where(mutations.c.order_id == a["id"]).values(
                amount=y, posted_at=at - timedelta(hours=1)))
        held = blocker.transaction()
        await held.start()
        await blocker.execute("LOCK TABLE review_cases IN SHARE MODE")
        async with container.db.read() as conn:
            [job] = (await conn.execute(sa.select(outbox).where(
                outbox.c.event_type == "mutations.judge_again",
                outbox.c.aggregate_id == debit_id))).all()
        judging = asyncio.create_task(container.reconciliation.judge_again(
            OutboxEvent.from_row(job)))  # as the worker's relay would
        await until_waiting(admin, "the worker")  # D claimed for A, its case waits for us
        pushing = asyncio.create_task(push_at(client, container, m.account_number, y, "CR",
                                              at - timedelta(minutes=1)))
        await until_waiting(admin, "the push", sessions=2)  # for D's row
        await held.commit()
        await judging
        pushed = await pushing
    finally:
        await blocker.close()
        await admin.close()
    assert pushed["matched"] == 1
    cases = [*await cases_of(container, a["id"]), *await cases_of(container, b["id"])]
    assert [(c.reason, c.mutation_id) for c in cases] == [("possible_reversal", debit_id)]
    assert (await debits_of(container, m.account_number))[debit_id] == (
        "reversal", cases[0].order_id)


# -- a credit a person matches by hand -------------------------------------------------------

async def match_by_hand(client: httpx.AsyncClient, ops: dict[str, str], credit_id: str,
                        order_id: str) -> dict[str, Any]:
    r = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": credit_id, "order_id": order_id,
        "reason": "customer sent proof; paid without the unique code"})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_a_debit_stored_before_a_credit_matched_by_hand_flags_the_order_once(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    """The customer paid 200,000 without the unique code; the bank took the transfer back
    (its correction stored first, ignored: nothing it could take back was matched). Then
    finance matched the credit to the order by hand: the order was settled for money that had
    gone back, and nobody was told."""
    m = await new_merchant(container)
    order = await capture(client, m, 200_000)
    assert (await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "KOREKSI TRSF CR SITI", 200_000, "DB")]))).json()["possible_reversals"] == 0
    [debit_id] = await debits_of(container, m.account_number)
    credit_id = await unmatched_credit(client, ops, m, 200_000)  # without the code

    matched = await match_by_hand(client, ops, credit_id, order["id"])
    assert matched["order_status"] == "needs_review"  # paid without the code: a person confirms
    reversal = [c for c in await cases_of(container, order["id"])
                if c.reason == "possible_reversal"]
    assert [(c.mutation_id, c.amount, c.recommended_action) for c in reversal] == [
        (debit_id, 200_000, "check_with_bank")]
    assert matched["possible_reversal_case_ids"] == [reversal[0].id], matched
    assert await debits_of(container, m.account_number) == {debit_id: ("reversal", order["id"])}
    assert [(p["debit_mutation_id"], p["credit_mutation_id"])
            for p in await told_of(container, order["id"])
            if p["reason"] == "possible_reversal"] == [(debit_id, credit_id)]


async def lock_waits(admin: Any) -> list[str]:
    """What each session of this database waiting for a lock waits for (``relation``,
    ``advisory``, ``transactionid``...)."""
    return sorted(await admin.fetchval(
        "SELECT array_agg(wait_event) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"))


async def test_a_credit_matched_by_hand_while_a_statement_stores_its_debit_flags_the_order_once(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], pg_url: str,
) -> None:
    """The statement with the bank's correction has looked for credits it may take back (none
    matched) and is held before it commits (a third session holds the audit trail it writes
    last); finance matches the credit by hand meanwhile and finds no debit stored before it
    (the statement's is not committed). Neither saw the other. The person's match must not
    wait for the import's account lock either: a statement may hold it for a minute."""
    import asyncio

    m = await new_merchant(container)
    order = await capture(client, m, 200_000)
    credit_id = await unmatched_credit(client, ops, m, 200_000)
    async with held_by_a_third_session(pg_url, AUDIT_TRAIL_HELD) as (held, admin):
        statement = asyncio.create_task(upload(client, ops, m, bca_statement(
            m.account_number, [(today(), "KOREKSI TRSF CR SITI", 200_000, "DB")])))
        await until_waiting(admin, "the statement")
        matching = asyncio.create_task(match_by_hand(client, ops, credit_id, order["id"]))
        await until_waiting(admin, "the match", sessions=2)  # for the audit trail it writes
        assert await lock_waits(admin) == ["relation", "relation"]  # not the account's lock
        await held.commit()
        imported, matched = await statement, await matching
    assert imported.status_code == 201, imported.text
    assert imported.json()["possible_reversals"] == 0
    assert matched["order_status"] == "needs_review"
    [debit_id] = await debits_of(container, m.account_number)

    cases = await relay_until_reversal(container, order["id"])
    assert [c.mutation_id for c in cases] == [debit_id]
    assert await debits_of(container, m.account_number) == {debit_id: ("reversal", order["id"])}
    await relay_until_reversal(container, order["id"])  # anything left to judge opens nothing
    assert len([p for p in await told_of(container, order["id"])
                if p["reason"] == "possible_reversal"]) == 1


async def test_a_debit_pushed_while_a_credit_is_matched_by_hand_flags_the_order_once(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], pg_url: str,
) -> None:
    """The other way round: the manual match has looked for debits stored before the credit
    (none) and is held before it commits (a third session holds the audit trail it writes);
    the bank's correction is pushed meanwhile and finds no matched credit to take back (the
    match is not committed). The push still answers at once."""
    import asyncio

    m = await new_merchant(container)
    order = await capture(client, m, 200_000)
    credit_id = await unmatched_credit(client, ops, m, 200_000)
    async with held_by_a_third_session(pg_url, AUDIT_TRAIL_HELD) as (held, admin):
        matching = asyncio.create_task(match_by_hand(client, ops, credit_id, order["id"]))
        await until_waiting(admin, "the match")
        pushed = await push_at(client, container, m.account_number, 200_000, "DB", today())
        assert not matching.done()  # the push answered while the match was not committed
        assert pushed["possible_reversals"] == 0
        await held.commit()
        matched = await matching
    assert matched["order_status"] == "needs_review"
    [debit_id] = await debits_of(container, m.account_number)

    cases = await relay_until_reversal(container, order["id"])
    assert [c.mutation_id for c in cases] == [debit_id]
    assert await debits_of(container, m.account_number) == {debit_id: ("reversal", order["id"])}
    assert len([p for p in await told_of(container, order["id"])
                if p["reason"] == "possible_reversal"]) == 1


async def relay_until_reversal(container: Container, order_id: str) -> list[Any]:
    """``relay_until_flagged`` for an order with a case of its own already (its payment, made
    without the unique code, awaits a person): its possible_reversal cases."""
    import asyncio

    relay = worker_relay(container)
    for _ in range(100):
        await relay.run_once()
        if cases := [c for c in await cases_of(container, order_id)
                     if c.reason == "possible_reversal"]:
            return cases
        await asyncio.sleep(0.05)
    return []


async def test_a_second_payment_matched_by_hand_is_judged_against_debits_stored_before_it(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    """The order is paid by its coded transfer; a second transfer of 200,000 (without the code)
    came too, and so did the bank's correction of it, stored first. Matched by hand, the second
    transfer opens a second_payment case asking for its refund: without the possible reversal
    beside it, finance would refund money the bank had already taken back."""
    m = await new_merchant(container)
    order = await capture(client, m, 200_000)
    pay = order["payment"]["transfer_amount"]
    assert (await upload(client, ops, m, bca_statement(m.account_number, [
        (today(), "TRSF E-BANKING CR ANDI", pay, "CR"),
        (today(), "KOREKSI TRSF CR SITI", 200_000, "DB")]))).json()["possible_reversals"] == 0
    [debit_id] = await debits_of(container, m.account_number)
    credit_id = await unmatched_credit(client, ops, m, 200_000)

    matched = await match_by_hand(client, ops, credit_id, order["id"])
    assert (matched["verdict"], matched["order_status"]) == ("second_payment", "paid")
    cases = await cases_of(container, order["id"])
    assert sorted((c.reason, c.mutation_id) for c in cases) == [
        ("possible_reversal", debit_id), ("second_payment", credit_id)]
    assert await debits_of(container, m.account_number) == {debit_id: ("reversal", order["id"])}
    # The reply named the second_payment case only: the person asked to refund it was not
    # told, there, of the case saying the bank may have taken it back already.
    by_reason = {c.reason: c.id for c in cases}
    assert matched["review_case_id"] == by_reason["second_payment"]
    assert matched["possible_reversal_case_ids"] == [by_reason["possible_reversal"]], matched
