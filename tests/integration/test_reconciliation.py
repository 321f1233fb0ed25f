"""Reconciliation: bank mutations settle manual-transfer orders exactly once, and everything a
machine cannot decide reaches a person with a reason."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.domain.clock import WIB
from orchestrator.services.expiry import expire_due_orders
from orchestrator.services.order_view import wib
from orchestrator.store.tables import (
    audit_log,
    evidence,
    mutations,
    orders,
    outbox,
    payout_accounts,
    review_cases,
)
from tests.support import (
    ShopFixture,
    account_number,
    bca_statement,
    new_merchant,
    new_ops_token,
    order_body,
)


@pytest.fixture(scope="module")
async def ops(container: Container) -> dict[str, str]:
    return {"Authorization": f"Bearer {await new_ops_token(container)}"}


async def capture(client: httpx.AsyncClient, m: ShopFixture, amount: int = 150_000,
                  **extra: Any) -> dict[str, Any]:
    r = await client.post("/v1/orders", json=order_body(f"INV-{uuid.uuid4().hex[:10]}", amount,
                                                        **extra),
                          headers={**m.headers, "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def upload(client: httpx.AsyncClient, ops: dict[str, str], m: ShopFixture,
                 data: bytes, bank: str = "bca") -> httpx.Response:
    return await client.post(
        "/v1/mutations/statements", headers=ops,
        files={"file": ("mutasi.csv", data, "text/csv")},
        data={"bank": bank, "account_number": m.account_number},
    )


async def rows(container: Container, query: Any) -> list[Any]:
    async with container.db.read() as conn:
        return list((await conn.execute(query)).all())


def now() -> datetime:
    return datetime.now(UTC)


async def test_statement_import_settles_the_order_and_tells_the_merchant_once(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    statement = bca_statement(m.account_number, [
        (now(), f"TRSF E-BANKING CR 2311/FTSCY/WS95031 {pay}.00 ANDI", pay, "CR"),
        (now(), "BIAYA ADM", 10_000, "DB"),
        (now(), "SETORAN TUNAI", 55_555, "CR"),
    ])
    r = await upload(client, ops, m, statement)
    assert r.status_code == 201, r.text
    report = r.json()
    assert {k: report[k] for k in ("parsed", "new", "duplicate", "matched", "ambiguous",
                                   "unmatched", "ignored_debits")} == {
        "parsed": 3, "new": 3, "duplicate": 0, "matched": 1, "ambiguous": 0, "unmatched": 1,
        "ignored_debits": 1}
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "paid" and read["paid_at"].endswith("Z")
    assert read["display"]["paid_at"] == wib(datetime.fromisoformat(read["paid_at"]))
    events = await rows(container, sa.select(outbox.c.event_type)
                        .where(outbox.c.aggregate_id == order["id"]).order_by(outbox.c.id))
    assert [e.event_type for e in events] == ["order.captured", "order.paid"]

    again = (await upload(client, ops, m, statement)).json()
    assert (again["new"], again["duplicate"], again["matched"]) == (0, 3, 0)
    assert len(await rows(container, sa.select(evidence.c.id)
                          .where(evidence.c.order_id == order["id"]))) == 1
    assert len(await rows(container, sa.select(outbox.c.id).where(
        outbox.c.aggregate_id == order["id"], outbox.c.event_type == "order.paid"))) == 1


async def test_two_identical_lines_in_one_statement_are_two_payments(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    line = (now(), f"TRSF E-BANKING CR {pay}.00 ANDI", pay, "CR")
    report = (await upload(client, ops, m, bca_statement(m.account_number, [line, line]))).json()
    assert (report["new"], report["matched"], report["needs_review"]) == (2, 2, 1)
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "paid"  # a paid order stays paid
    cases = await rows(container, sa.select(review_cases).where(
        review_cases.c.order_id == order["id"]))
    assert [(c.reason, c.recommended_action) for c in cases] == [("second_payment", "refund")]


async def test_concurrent_imports_of_one_statement_match_each_mutation_once(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    created = [await capture(client, m, 90_000 + i) for i in range(5)]
    statement = bca_statement(m.account_number, [
        (now(), f"TRSF CR {o['payment']['transfer_amount']}", o["payment"]["transfer_amount"],
         "CR") for o in created
    ])
    replies = await asyncio.gather(*[upload(client, ops, m, statement) for _ in range(4)])
    assert all(r.status_code == 201 for r in replies)
    assert sum(r.json()["matched"] for r in replies) == 5
    assert sum(r.json()["new"] for r in replies) == 5
    for o in created:
        assert (await client.get(f"/v1/orders/{o['id']}", headers=m.headers)).json()[
            "status"] == "paid"
        assert len(await rows(container, sa.select(evidence.c.id)
                              .where(evidence.c.order_id == o["id"]))) == 1


async def test_orders_are_still_served_while_a_large_statement_is_parsed(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """Parsing a statement is CPU work of up to a second for a large file; on the event loop it
    stalled every capture meanwhile. It runs in a thread, so the loop keeps turning. Seen
    without a clock: the parse pauses the garbage collector, so a loop turn that finds it
    paused happened mid-parse (on the loop, the parse would pause and resume it in one turn)."""
    import gc

    m = await new_merchant(container)
    statement = bca_statement(m.account_number, [
        (now() - timedelta(seconds=i), f"TRSF E-BANKING CR {i:08d} ANDI", 10_000 + i, "CR")
        for i in range(20_000)])
    turns_mid_parse = 0

    async def turn_the_loop() -> None:
        nonlocal turns_mid_parse
        while True:
            turns_mid_parse += not gc.isenabled()
            await asyncio.sleep(0)

    turning = asyncio.create_task(turn_the_loop())
    try:
        r = await upload(client, ops, m, statement)
    finally:
        turning.cancel()
    assert r.status_code == 201, r.text
    assert turns_mid_parse > 0


async def test_amount_that_differs_puts_the_order_in_review(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await capture(client, m)
    short = order["payment"]["transfer_amount"] - 1_000
    reference = order["id"].upper()
    report = (await upload(client, ops, m, bca_statement(
        m.account_number, [(now(), f"TRSF CR {reference} ANDI", short, "CR")]))).json()
    assert report["matched"] == 1 and report["needs_review"] == 1
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert (read["status"], read["review_reason"]) == ("needs_review", "amount_mismatch")


async def test_a_typed_reference_does_not_beat_another_orders_exact_unique_amount(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """Order A's customer paid A's unique amount to the rupiah, typing order B's id. Before,
    the reference won: B went to review as an amount mismatch (refund recommended) and A, paid
    in full, was left to expire. Two signals naming two orders are for a person."""
    m = await new_merchant(container)
    a, b = await capture(client, m, 81_000), await capture(client, m, 92_000)
    report = (await upload(client, ops, m, bca_statement(m.account_number, [
        (now(), f"TRSF CR {b['id'].upper()} ANDI", a["payment"]["transfer_amount"], "CR"),
    ]))).json()
    assert (report["matched"], report["ambiguous"], report["needs_review"]) == (0, 1, 0)
    for o in (a, b):
        assert (await client.get(f"/v1/orders/{o['id']}", headers=m.headers)).json()[
            "status"] == "awaiting_payment"
    listed = (await client.get("/v1/reconciliation/unmatched", headers=ops,
                               params={"account_number": m.account_number})).json()["data"]
    assert [x["match_state"] for x in listed] == ["ambiguous"]


async def test_payment_after_expiry_is_never_dropped(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await capture(client, m, expires_in=300)
    expired = 0
    later = now() + timedelta(seconds=301)
    while await expire_due_orders(container.db, now=later, quarantine=timedelta(hours=1),
                                  batch=500):
        expired += 1
    assert (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()[
        "status"] == "expired"
    pay = order["payment"]["transfer_amount"]
    report = (await upload(client, ops, m, bca_statement(
        m.account_number, [(now(), f"TRSF CR {pay}", pay, "CR")]))).json()
    assert report["matched"] == 1
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert (read["status"], read["review_reason"]) == ("needs_review", "payment_after_expiry")
    types = [e.event_type for e in await rows(container, sa.select(outbox.c.event_type).where(
        outbox.c.aggregate_id == order["id"]).order_by(outbox.c.id))]
    assert types == ["order.captured", "order.expired", "order.needs_review",
                     "review_case.opened"]


async def test_the_unmatched_list_reads_to_its_end_page_by_page(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """A busy account can hold more unmatched credits than one page: each page continues after
    the last credit of the one before, none skipped or shown twice, even when one is matched
    between pages."""
    m = await new_merchant(container)
    await upload(client, ops, m, bca_statement(m.account_number, [
        (now() - timedelta(minutes=5 - i), f"KR OTOMATIS LLG-ANTAR BANK {i}", 301_000 + i, "CR")
        for i in range(5)]))
    url, mine = "/v1/reconciliation/unmatched", {"account_number": m.account_number}
    first = (await client.get(url, headers=ops, params={**mine, "limit": "2"})).json()
    assert [x["amount"] for x in first["data"]] == [301_000, 301_001]
    assert first["next_after"] == first["data"][-1]["id"]
    order = await capture(client, m, 400_000)  # a person matches the first credit meanwhile
    r = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": first["data"][0]["id"], "order_id": order["id"], "reason": "proof"})
    assert r.status_code == 201, r.text
    seen, after = list(first["data"]), first["next_after"]
    while after:
        page = (await client.get(url, headers=ops,
                                 params={**mine, "limit": "2", "after": after})).json()
        assert not {x["id"] for x in page["data"]} & {x["id"] for x in seen}  # never again
        seen += page["data"]
        after = page["next_after"]
    assert [x["amount"] for x in seen] == [301_000 + i for i in range(5)]
    gone = await client.get(url, headers=ops, params={"after": "mut_nope"})
    assert (gone.status_code, gone.json()["code"]) == (404, "not_found")


async def test_unmatched_credit_is_listed_and_matched_by_a_person_with_an_audit_trail(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await capture(client, m, 200_000)
    report = (await upload(client, ops, m, bca_statement(
        m.account_number, [(now(), "KR OTOMATIS LLG-ANTAR BANK SITI", 200_000, "CR")]))).json()
    assert report["unmatched"] == 1
    listed = (await client.get("/v1/reconciliation/unmatched", headers=ops,
                               params={"account_number": m.account_number})).json()["data"]
    assert [(x["amount"], x["match_state"]) for x in listed] == [(200_000, "unmatched")]
    mutation_id = listed[0]["id"]
    r = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": mutation_id, "order_id": order["id"],
        "reason": "customer sent proof; paid without the unique code"})
    assert r.status_code == 201, r.text
    assert r.json()["matched_by"] == "ops:finance-test"
    # Paid without the code: the amount differs from the transfer amount, so a person confirms.
    assert r.json()["order_status"] == "needs_review"
    twice = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": mutation_id, "order_id": order["id"], "reason": "again"})
    assert twice.status_code == 409
    audit = await rows(container, sa.select(audit_log).where(audit_log.c.subject_id == mutation_id))
    assert [(a.actor, a.action, a.reason) for a in audit] == [
        ("ops:finance-test", "mutation.matched_manually",
         "customer sent proof; paid without the unique code")]
    assert (await client.get("/v1/reconciliation/unmatched", headers=ops, params={
        "account_number": m.account_number})).json()["data"] == []


async def unmatched_credit(client: httpx.AsyncClient, ops: dict[str, str], m: ShopFixture,
                           amount: int, bank: str = "bca") -> str:
    """A credit of ``amount`` no order claims, on ``m``'s account; its mutation id."""
    from tests.integration.test_reconciliation_batch import bri_statement

    statement = (bri_statement(m.account_number, [(now(), amount)]) if bank == "bri" else
                 bca_statement(m.account_number, [(now(), "KR OTOMATIS LLG SITI", amount, "CR")]))
    assert (await upload(client, ops, m, statement, bank)).json()["unmatched"] == 1
    listed = (await client.get("/v1/reconciliation/unmatched", headers=ops,
                               params={"account_number": m.account_number})).json()["data"]
    [credit] = [x for x in listed if x["amount"] == amount and x["bank"] == bank]
    return str(credit["id"])


async def test_merchants_sharing_one_account_are_paid_by_their_own_unique_amounts(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """One (bank, account) may be the payout account of several merchants (a company's shops):
    the amount a transfer attempt holds is unique on the account across merchants, and a
    reference names one order, so a credit still finds the order it pays."""
    a = await new_merchant(container)
    b = await same_number_at_another_bank(container, a, "bca")
    first, second = await capture(client, a), await capture(client, b)
    pays = [o["payment"]["transfer_amount"] for o in (first, second)]
    assert pays[0] != pays[1]
    report = (await upload(client, ops, a, bca_statement(a.account_number, [
        (now(), f"TRSF CR {pay}", pay, "CR") for pay in reversed(pays)]))).json()
    assert (report["matched"], report["needs_review"]) == (2, 0)
    for m, o in ((a, first), (b, second)):
        assert (await client.get(f"/v1/orders/{o['id']}", headers=m.headers)).json()[
            "status"] == "paid"


async def test_a_person_cannot_pay_an_order_with_money_on_another_merchants_account(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """The credit landed on merchant A's account; B's customer's order is not paid by it, even
    by hand: B would ship goods for money B never received."""
    a, b = await new_merchant(container), await new_merchant(container)
    order = await capture(client, b, 200_000)
    mutation_id = await unmatched_credit(client, ops, a, order["payment"]["transfer_amount"])
    r = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": mutation_id, "order_id": order["id"], "reason": "customer sent proof"})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "not_the_merchants_account"
    assert a.account_number in r.json()["detail"]
    assert (await client.get(f"/v1/orders/{order['id']}", headers=b.headers)).json()[
        "status"] == "awaiting_payment"
    [credit] = await rows(container, sa.select(mutations.c.match_state, mutations.c.order_id)
                          .where(mutations.c.id == mutation_id))
    assert tuple(credit) == ("unmatched", None)
    assert await rows(container, sa.select(audit_log.c.id).where(
        audit_log.c.subject_id == mutation_id)) == []


async def test_a_person_may_match_a_credit_on_any_account_of_the_orders_merchant(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """The customer was told the BCA account but paid into the merchant's BRI account: the
    money is the merchant's, so a person may match it (to the BCA transfer attempt)."""
    m = await new_merchant(container)
    bri = ShopFixture(m.merchant_id, m.api_key, m.webhook_secret, "bri", account_number())
    async with container.db.transaction() as conn:
        await conn.execute(payout_accounts.insert().values(
            id=f"acc_{uuid.uuid4().hex[:26]}", merchant_id=m.merchant_id, bank="bri",
            account_number=bri.account_number, account_name="TOKO UJI", priority=9,
            created_at=now()))
    order = await capture(client, m, 210_000)
    assert order["payment"]["bank"] == "bca"
    pay = order["payment"]["transfer_amount"]
    mutation_id = await unmatched_credit(client, ops, bri, pay, bank="bri")
    r = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": mutation_id, "order_id": order["id"], "reason": "paid to our BRI"})
    assert r.status_code == 201, r.text
    assert (r.json()["order_status"], r.json()["verdict"]) == ("paid", "settle")


class TestStatementsThatAreRefusedWhole:
    async def _refused(self, client: httpx.AsyncClient, container: Container,
                       ops: dict[str, str], m: ShopFixture, data: bytes,
                       bank: str = "bca") -> dict[str, Any]:
        before = await rows(container, sa.select(mutations.c.id)
                            .where(mutations.c.account_number == m.account_number))
        r = await upload(client, ops, m, data, bank)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        after = await rows(container, sa.select(mutations.c.id)
                           .where(mutations.c.account_number == m.account_number))
        assert before == after
        return dict(r.json())

    async def test_truncated_statement(self, client: httpx.AsyncClient, container: Container,
                                       ops: dict[str, str]) -> None:
        m = await new_merchant(container)
        full = bca_statement(m.account_number, [(now(), "TRSF CR 1", 100_001, "CR"),
                                                (now(), "TRSF CR 2", 100_002, "CR")])
        cut = full[: full.index(b"TRSF CR 2") + 5]
        problem = await self._refused(client, container, ops, m, cut)
        assert problem["line"] == 9

    async def test_wrong_format_for_the_bank(self, client: httpx.AsyncClient,
                                             container: Container, ops: dict[str, str]) -> None:
        m = await new_merchant(container)
        data = bca_statement(m.account_number, [(now(), "TRSF CR 1", 100_001, "CR")])
        problem = await self._refused(client, container, ops, m, data, bank="mandiri")
        assert problem["code"] == "statement_rejected"

    async def test_statement_of_another_account(self, client: httpx.AsyncClient,
                                                container: Container, ops: dict[str, str]) -> None:
        m = await new_merchant(container)
        data = bca_statement("9999999999", [(now(), "TRSF CR 1", 100_001, "CR")])
        problem = await self._refused(client, container, ops, m, data)
        assert "9999999999" in problem["detail"] or "account" in problem["detail"].lower()

    async def test_upload_needs_an_ops_token(self, client: httpx.AsyncClient,
                                             container: Container) -> None:
        m = await new_merchant(container)
        r = await upload(client, m.headers, m, b"whatever")
        assert r.status_code == 401


def moota_body(account: str, amount: int, mutation_id: str | None = None) -> bytes:
    item = {"mutation_id": mutation_id or uuid.uuid4().hex[:11], "bank_id": "bk7Hq2Lm9Zs",
            "account_number": account, "date": now().astimezone(WIB).strftime("%Y-%m-%d 00:00:00"),
            "description": f"TRSF E-BANKING CR {amount}.00 ANDI", "amount": f"{amount}.00",
            "type": "CR", "balance": "2150123.00", "note": "", "created_at": "2025-03-10 09:12:44",
            "updated_at": "2025-03-10 09:12:44"}
    return json.dumps([item], separators=(",", ":")).encode()


async def test_signed_push_settles_and_a_forged_one_stores_nothing(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    order = await capture(client, m)
    body = moota_body(m.account_number, order["payment"]["transfer_amount"])
    secret = container.settings.mutation_push_secret.encode()
    forged = await client.post("/v1/mutations/push", content=body, headers={
        "Signature": hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json"})
    assert forged.status_code == 401 and forged.json()["code"] == "bad_signature"
    unsigned = await client.post("/v1/mutations/push", content=body)
    assert unsigned.status_code == 401
    assert await rows(container, sa.select(mutations.c.id).where(
        mutations.c.account_number == m.account_number)) == []
    signed = await client.post("/v1/mutations/push", content=body, headers={
        "Signature": hmac.new(secret, body, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json"})
    assert signed.status_code == 200, signed.text
    assert signed.json()["matched"] == 1
    replay = await client.post("/v1/mutations/push", content=body, headers={
        "Signature": hmac.new(secret, body, hashlib.sha256).hexdigest()})
    assert replay.json()["duplicate"] == 1
    assert (await rows(container, sa.select(orders.c.state).where(
        orders.c.id == order["id"])))[0].state == "paid"


def moota_item(account: str, amount: int, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = json.loads(moota_body(account, amount))[0]
    return {**item, **extra}


async def same_number_at_another_bank(container: Container, m: ShopFixture, bank: str
                                      ) -> ShopFixture:
    """Another merchant whose payout account at ``bank`` has ``m``'s account number."""
    from orchestrator.store.merchants import create_merchant

    async with container.db.transaction() as conn:
        made = await create_merchant(conn, name="Toko Lain", webhook_url=None,
                                     accounts=[(bank, m.account_number, "TOKO LAIN")], now=now())
    return ShopFixture(made.merchant_id, made.api_key, made.webhook_secret, bank,
                       m.account_number)


async def stored_banks(container: Container, account: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in await rows(container, sa.select(
        mutations.c.bank, mutations.c.match_state).where(
        mutations.c.account_number == account).order_by(mutations.c.created_at))]


async def test_a_push_is_booked_to_the_bank_it_names_whatever_other_bank_has_the_number(
    client: httpx.AsyncClient, container: Container
) -> None:
    """Y's BCA account and X's BRI account share a number. A push from X's BRI account (or from
    a BSI account Lunas serves no one on) was booked to BCA, the first bank found with the
    number, and paid Y's order with money that never reached Y."""
    from tests.support import signed_push

    y = await new_merchant(container)
    await same_number_at_another_bank(container, y, "bri")
    order = await capture(client, y)
    pay = order["payment"]["transfer_amount"]
    for bank_type in ("briCmsV2", "bsi"):
        r = await signed_push(client, container, [
            moota_item(y.account_number, pay, bank={"bank_type": bank_type})])
        assert (r.json()["new"], r.json()["matched"], r.json()["unmatched"]) == (1, 0, 1)
    assert (await client.get(f"/v1/orders/{order['id']}", headers=y.headers)).json()[
        "status"] == "awaiting_payment"
    r = await signed_push(client, container, [
        moota_item(y.account_number, pay, bank={"bank_type": "bca"})])
    assert r.json()["matched"] == 1
    assert await stored_banks(container, y.account_number) == [
        ("bri", "unmatched"), ("bsi", "unmatched"), ("bca", "matched")]


async def test_a_push_that_does_not_say_which_bank_of_two_is_set_aside_not_guessed(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """Without ``bank.bank_type`` (webhooks may leave it out) a number registered at two banks
    names no account. The item is kept for a person, not stored: stored, its Moota id would
    make the listing that names the bank a duplicate, never matched."""
    from tests.support import signed_push

    y = await new_merchant(container)
    await same_number_at_another_bank(container, y, "bri")
    order = await capture(client, y)
    item = moota_item(y.account_number, order["payment"]["transfer_amount"])
    r = await signed_push(client, container, [item])
    assert r.status_code == 200, r.text
    assert (r.json()["new"], r.json()["matched"], r.json()["unreadable"]) == (0, 0, 1)
    assert await stored_banks(container, y.account_number) == []
    listed = (await client.get("/v1/reconciliation/unreadable", headers=ops,
                               params={"limit": "1000"})).json()["data"]
    [aside] = [i for i in listed if i["mutation_ref"] == item["mutation_id"]]
    assert "BCA" in aside["problem"] and "BRI" in aside["problem"]
    assert y.account_number in aside["raw_item"]

    # A bank type Lunas does not know names no bank either: still set aside, and kept once.
    unknown = await signed_push(client, container, [{**item, "bank": {"bank_type": "klikBca"}}])
    assert (unknown.json()["new"], unknown.json()["unreadable"]) == (0, 1)
    named = await signed_push(client, container, [{**item, "bank": {"bank_type": "bca"}}])
    assert named.json()["matched"] == 1
    assert (await client.get(f"/v1/orders/{order['id']}", headers=y.headers)).json()[
        "status"] == "paid"
    closed = (await client.get("/v1/reconciliation/unreadable", headers=ops, params={
        "status": "read", "limit": "1000"})).json()["data"]
    assert aside["id"] in {i["id"] for i in closed}


async def test_a_person_matching_the_copy_of_a_credit_an_import_just_matched_is_told_so(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """The Moota copy of a transfer holds one order's amount and names another in its
    description, so it waits for a person; the bank's file, naming none, pays the order
    meanwhile with its own copy (another fingerprint). The person, deciding on what they saw,
    matched the Moota copy to the order: a `second_payment` case recommended refunding money
    received once. It is the existing duplicate rule's possible duplicate, and the match is
    refused saying so; matched again, knowingly, it is a second payment."""
    m = await new_merchant(container)
    order, other = await capture(client, m), await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    item = moota_item(m.account_number, pay, description=f"TRSF E-BANKING CR {other['id']} ANDI")
    assert (await container.reconciliation.ingest_push(json.dumps([item]).encode())).ambiguous == 1
    [seen] = (await client.get("/v1/reconciliation/unmatched", headers=ops, params={
        "account_number": m.account_number})).json()["data"]
    imported = (await upload(client, ops, m, bca_statement(
        m.account_number, [(now(), f"TRSF E-BANKING CR {pay}.00 ANDI", pay, "CR")]))).json()
    assert imported["matched"] == 1
    [paid_by] = await rows(container, sa.select(mutations.c.id).where(
        mutations.c.order_id == order["id"], mutations.c.source == "statement"))

    r = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": seen["id"], "order_id": order["id"], "reason": "customer sent proof"})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "likely_duplicate"
    assert paid_by.id in r.json()["detail"]
    [copy] = await rows(container, sa.select(mutations.c.match_state).where(
        mutations.c.id == seen["id"]))
    assert copy.match_state == "likely_duplicate"
    cases = await rows(container, sa.select(review_cases.c.reason, review_cases.c.mutation_id)
                       .where(review_cases.c.order_id == order["id"]))
    assert [tuple(c) for c in cases] == [("possible_duplicate", seen["id"])]
    assert [v for (v,) in await rows(container, sa.select(evidence.c.verdict).where(
        evidence.c.order_id == order["id"]))] == ["settle"]

    knowingly = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": seen["id"], "order_id": order["id"],
        "reason": "two transfers on the bank's statement: a second payment"})
    assert knowingly.status_code == 201, knowingly.text
    assert knowingly.json()["verdict"] == "second_payment"


async def merchant_with_account(container: Container, number: str) -> ShopFixture:
    from orchestrator.store.merchants import create_merchant

    async with container.db.transaction() as conn:
        made = await create_merchant(conn, name="Toko Uji", webhook_url=None,
                                     accounts=[("bca", number, "TOKO UJI")], now=now())
    return ShopFixture(made.merchant_id, made.api_key, made.webhook_secret, "bca", number)


async def test_a_push_whose_account_number_is_a_json_number_is_read_only_if_it_is_one_account(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """A JSON number keeps no leading zero: account 0123456789 arrived as 123456789 and was
    stored under no payout account, matching nothing, with nobody told. Such an item is set
    aside for a person, saying why, unless the number is exactly the number of a payout account
    and no other payout account's number reads as it once its leading zeros are lost."""
    from tests.support import signed_push

    async def unreadable(ref: str) -> list[dict[str, Any]]:
        listed = (await client.get("/v1/reconciliation/unreadable", headers=ops,
                                   params={"limit": "1000"})).json()["data"]
        return [i for i in listed if i["mutation_ref"] == ref]

    nine = account_number()[:9]
    zero = await merchant_with_account(container, "0" + nine)
    order = await capture(client, zero)
    item = moota_item(zero.account_number, order["payment"]["transfer_amount"],
                      account_number=int(zero.account_number))
    r = await signed_push(client, container, [item])
    assert (r.json()["new"], r.json()["matched"], r.json()["unreadable"]) == (0, 0, 1), r.text
    assert await stored_banks(container, nine) == []
    [aside] = await unreadable(item["mutation_id"])
    assert "JSON number" in aside["problem"] and f'"account_number": {nine}' in aside["raw_item"]
    assert (await client.get(f"/v1/orders/{order['id']}", headers=zero.headers)).json()[
        "status"] == "awaiting_payment"

    exact = await merchant_with_account(container, "1" + nine)
    order = await capture(client, exact)
    pay = order["payment"]["transfer_amount"]
    r = await signed_push(client, container, [
        moota_item(exact.account_number, pay, account_number=int(exact.account_number))])
    assert (r.json()["matched"], r.json()["unreadable"]) == (1, 0), r.text

    await merchant_with_account(container, "0" + exact.account_number)  # 11 digits at BCA
    order = await capture(client, exact)
    item = moota_item(exact.account_number, order["payment"]["transfer_amount"],
                      account_number=int(exact.account_number))
    r = await signed_push(client, container, [item])
    assert (r.json()["new"], r.json()["unreadable"]) == (0, 1), r.text
    assert len(await unreadable(item["mutation_id"])) == 1
