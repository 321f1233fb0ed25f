"""People resolve review cases (API and CLI), audited: honour pays a needs_review order, refund
closes it as refunded, and a case on a settled order records the decision without moving it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.services.reviews import resolve_case
from orchestrator.services.settlement import Payment, apply_payment
from orchestrator.store.tables import audit_log, orders, outbox, payment_attempts, review_cases
from tests.e2e.test_checkout_to_webhook import LUNAS
from tests.e2e.test_cli import run_each
from tests.integration.test_reconciliation import capture, moota_body, upload
from tests.support import ShopFixture, bca_statement, eventually, new_merchant, new_ops_token


@pytest.fixture(scope="module")
async def ops(container: Container) -> dict[str, str]:
    return {"Authorization": f"Bearer {await new_ops_token(container)}"}


async def paid_short(client: httpx.AsyncClient, container: Container, ops: dict[str, str],
                     m: ShopFixture) -> dict[str, Any]:
    """An order paid 1,000 short (by reference): needs_review with one open case."""
    order = await capture(client, m)
    short = order["payment"]["transfer_amount"] - 1_000
    await upload(client, ops, m, bca_statement(m.account_number, [
        (datetime.now(UTC), f"TRSF CR {order['id'].upper()}", short, "CR")]))
    return order


async def open_case(client: httpx.AsyncClient, ops: dict[str, str], order_id: str
                    ) -> dict[str, Any]:
    cases = (await client.get("/v1/reviews", headers=ops, params={"order_id": order_id})
             ).json()["data"]
    [case] = cases
    return dict(case)


async def test_honouring_a_short_payment_pays_the_order_and_tells_the_merchant(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await paid_short(client, container, ops, m)
    case = await open_case(client, ops, order["id"])
    assert (case["reason"], case["state"]) == ("amount_mismatch", "open")
    r = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                          json={"action": "honour", "note": "customer paid bank fee; accept"})
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["resolution"]) == ("resolved", "honour")
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "paid" and read["paid_at"]
    async with container.db.read() as conn:
        told = (await conn.execute(sa.select(outbox.c.event_type, outbox.c.payload).where(
            outbox.c.aggregate_id == order["id"]).order_by(outbox.c.id))).all()
        audit = (await conn.execute(sa.select(audit_log.c.actor, audit_log.c.action).where(
            audit_log.c.subject_id == case["id"]))).all()
    assert [t.event_type for t in told][-2:] == ["order.paid", "review_case.resolved"]
    needs_review, paid = told[-4].payload, told[-2].payload
    assert told[-4].event_type == "order.needs_review"
    assert (needs_review["paid_at"], needs_review["display"]["paid_at"]) == (None, None)
    # The merchant hears when the person paid it, as the order API says it.
    assert (paid["paid_at"], paid["display"]) == (read["paid_at"], read["display"])
    assert [tuple(a) for a in audit] == [("ops:finance-test", "review_case.honour")]
    again = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                              json={"action": "refund", "note": "changed my mind"})
    assert again.status_code == 409 and again.json()["code"] == "case_already_resolved"


async def test_refunding_closes_the_order_as_refunded(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await paid_short(client, container, ops, m)
    case = await open_case(client, ops, order["id"])
    r = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                          json={"action": "refund", "note": "refunded by bank transfer #881"})
    assert r.status_code == 200
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "refunded"


async def test_a_second_payment_case_records_the_refund_and_the_order_stays_paid(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    line = (datetime.now(UTC), f"TRSF CR {pay}", pay, "CR")
    await upload(client, ops, m, bca_statement(m.account_number, [line, line]))
    case = await open_case(client, ops, order["id"])
    assert case["reason"] == "second_payment"
    # The order is paid once, by the other transfer: nothing is left to honour.
    assert case["allowed_actions"] == ["refund"]
    honour = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                               json={"action": "honour", "note": "keep it"})
    assert (honour.status_code, honour.json()["code"]) == (422, "action_not_allowed")
    assert "allowed: refund" in honour.json()["detail"], honour.text
    r = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                          json={"action": "refund", "note": "second transfer returned"})
    assert r.status_code == 200
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "paid"


async def test_resolutions_need_a_known_action_a_note_and_an_ops_token(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await paid_short(client, container, ops, m)
    case = await open_case(client, ops, order["id"])
    url = f"/v1/reviews/{case['id']}/resolve"
    assert (await client.post(url, headers=ops, json={"action": "ignore", "note": "x"})
            ).status_code == 422
    assert (await client.post(url, headers=ops, json={"action": "honour", "note": " "})
            ).status_code == 422
    assert (await client.post(url, headers=m.headers, json={"action": "honour", "note": "x"})
            ).status_code == 401
    assert (await client.post("/v1/reviews/rev_nope/resolve", headers=ops,
                              json={"action": "honour", "note": "x"})).status_code == 404
    # Expiring answers "was it paid?"; money that did arrive short is not expired away.
    expire = await client.post(url, headers=ops, json={"action": "expire", "note": "x"})
    assert (expire.status_code, expire.json()["field"]) == (422, "action")
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "needs_review"


async def test_cli_lists_and_resolves_cases(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], pg_url: str
) -> None:
    m = await new_merchant(container)
    order = await paid_short(client, container, ops, m)
    env = {**os.environ, "LUNAS_DATABASE_URL": pg_url}
    # Listings change nothing: side by side, each its own `lunas` process.
    listed, shown, bogus = run_each(env, ("reviews", "list", "--json"),
                                    ("reviews", "list", "--order", order["id"]),
                                    ("reviews", "list", "--state", "bogus"))
    assert (listed.returncode, shown.returncode) == (0, 0), (listed.stderr, shown.stderr)
    case = next(c for c in json.loads(listed.stdout) if c["order_id"] == order["id"])
    # For people, the amount says what it counts (a provider may report another currency).
    table = shown.stdout
    assert f" {case['amount']} IDR  order {order['id']}" in table, table
    # The answers --action takes for it: --json listed them, the table did not.
    assert case["allowed_actions"], case
    assert f"order {order['id']}  actions {'|'.join(case['allowed_actions'])}\n" in table, table
    done = subprocess.run([LUNAS, "reviews", "resolve", case["id"], "--action", "honour",
                           "--note", "approved by CS lead", "--actor", "sari", "--json"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["resolved_by"] == "cli:sari"
    twice = subprocess.run([LUNAS, "reviews", "resolve", case["id"], "--action", "refund",
                            "--note", "again", "--actor", "sari"], env=env, capture_output=True,
                           text=True, timeout=60, check=False)
    assert twice.returncode == 1 and "already resolved" in twice.stderr
    # It printed nothing and exited 0, as if the queue were empty; the API answers 400.
    assert (bogus.returncode, bogus.stdout) == (1, "")
    assert bogus.stderr == "lunas: state must be one of: open, resolved (or none for every case)\n"


async def test_the_open_queue_reads_to_its_end_page_by_page(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """Finance works a queue longer than one page: each page continues after the last case of
    the one before, oldest first, none skipped or shown twice."""
    m = await new_merchant(container)
    mine = [(await paid_short(client, container, ops, m))["id"] for _ in range(3)]
    seen: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params = {"limit": "2", **({"after": after} if after else {})}
        page = (await client.get("/v1/reviews", headers=ops, params=params)).json()
        # A cursor ignored would hand back a page already read (and loop for ever): fail instead.
        assert not {c["id"] for c in page["data"]} & {c["id"] for c in seen}
        seen += page["data"]
        after = page["next_after"]
        if after is None:
            break
    ids = [c["id"] for c in seen]
    assert len(ids) == len(set(ids))
    assert [c["order_id"] for c in seen if c["order_id"] in mine] == mine  # oldest first
    keys = [(c["created_at"], c["id"]) for c in seen]
    assert keys == sorted(keys)
    unknown = await client.get("/v1/reviews", headers=ops, params={"after": "rev_nope"})
    assert unknown.status_code == 404


async def test_a_resolution_waits_for_a_settlement_holding_the_order_and_never_deadlocks(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """Review finding: resolving locked the case, then the order; settlement and the expiry
    sweep lock the order, then write its cases. Overlapping, PostgreSQL rolled one back."""
    m = await new_merchant(container)
    order = await paid_short(client, container, ops, m)
    case = await open_case(client, ops, order["id"])
    async with container.db.transaction() as conn:  # a settlement of this order, in progress
        await conn.execute(sa.select(orders.c.id).where(orders.c.id == order["id"])
                           .with_for_update())
        resolving = asyncio.create_task(resolve_case(
            container.db, case_id=case["id"], action="refund", actor="ops:finance",
            note="refunded by transfer", now=datetime.now(UTC),
            quarantine=timedelta(hours=1)))
        await asyncio.sleep(0.5)  # the person's resolution now waits
        await conn.execute(review_cases.update().where(review_cases.c.id == case["id"])
                           .values(note="seen by the settlement"))
        await asyncio.sleep(1.5)  # past PostgreSQL's deadlock_timeout (1 s)
    resolved = await asyncio.wait_for(resolving, 10)
    assert (resolved["state"], resolved["resolution"]) == ("resolved", "refund")


async def test_a_transfer_code_left_behind_by_a_switch_returns_to_the_pool_after_a_decision(
    container: Container,
) -> None:
    """The customer switched from a bank transfer to QRIS (the transfer's amount stays held
    while the order is open); QRIS could not be read until its window ran out, and a person
    expired the order. The held amount must start its quarantine and then return to the pool,
    as when the sweep expires an order: held for ever, no other order on the account could be
    given that amount, and any credit of it would match this order for good."""
    from tests.integration.test_deferred_verification import run_out_the_window, shop

    async with shop(container) as s:
        placed = await s.checkout(rail="manual_transfer")
        r = await s.client.post(f"/v1/orders/{placed['id']}/payment", json={"rail": "qris"},
                                headers=s.merchant.headers)
        assert r.status_code == 201, r.text
        [transfer] = [a for a in await s.attempts(placed["id"]) if a.rail == "manual_transfer"]
        assert (transfer.state, transfer.holds_code) == ("superseded", True)
        await run_out_the_window(s, [placed["id"]])
        ops = {"Authorization": f"Bearer {await new_ops_token(s.container)}"}
        case = await open_case(s.client, ops, placed["id"])
        assert case["reason"] == "verification_window_exhausted"
        r = await s.client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops, json={
            "action": "expire", "note": "Midtrans dashboard: QR never paid"})
        assert r.status_code == 200, r.text
        [transfer] = [a for a in await s.attempts(placed["id"]) if a.rail == "manual_transfer"]
        assert transfer.code_held_until is not None, "the amount is held with no end"
        # Past the quarantine and the WIB day it ends in (expiry.release_cutoff).
        s.clock.advance(s.container.settings.unique_codes.quarantine + timedelta(days=1,
                                                                               minutes=10))

        async def released() -> bool:
            return not next(a for a in await s.attempts(placed["id"])
                            if a.rail == "manual_transfer").holds_code

        await eventually(released, 10, "the transfer amount back in the pool")


async def a_credit_seen_twice(client: httpx.AsyncClient, container: Container,
                              ops: dict[str, str], m: ShopFixture) -> tuple[dict[str, Any], Any]:
    """An order paid once by a transfer the Moota push and then the bank's file both report:
    the second copy waits for a person, with a possible_duplicate case naming it."""
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    body = moota_body(m.account_number, pay)
    signed = hmac.new(container.settings.mutation_push_secret.encode(), body,
                      hashlib.sha256).hexdigest()
    r = await client.post("/v1/mutations/push", content=body, headers={
        "Signature": signed, "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["matched"] == 1, r.text
    await upload(client, ops, m, bca_statement(m.account_number, [
        (datetime.now(UTC), f"TRSF E-BANKING CR {pay}.00 ANDI", pay, "CR")]))
    case = await open_case(client, ops, order["id"])
    assert (case["reason"], case["mutation_id"] is not None) == ("possible_duplicate", True)
    return order, case


async def refunds_recorded(container: Container, order_id: str) -> list[str]:
    async with container.db.read() as conn:
        return list((await conn.execute(sa.select(review_cases.c.reason).where(
            review_cases.c.order_id == order_id, review_cases.c.resolution == "refund")
        )).scalars().all())


async def test_a_possible_duplicate_matched_by_a_person_is_not_refunded_again_in_its_case(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """The case and the credit in the unmatched list are two handles on one sum of money: a
    person who matches the credit (a genuine second transfer) opens the second_payment case
    that asks for its refund; the possible_duplicate case, left open, took a second refund."""
    m = await new_merchant(container)
    order, case = await a_credit_seen_twice(client, container, ops, m)
    r = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": case["mutation_id"], "order_id": order["id"],
        "reason": "two transfers on the customer's statement"})
    assert r.status_code == 201, r.text
    assert r.json()["possible_reversal_case_ids"] == []  # no debit took it back
    second = await client.post(f"/v1/reviews/{r.json()['review_case_id']}/resolve",
                               headers=ops, json={"action": "refund", "note": "returned #12"})
    assert second.status_code == 200, second.text
    again = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops, json={
        "action": "refund", "note": "returned the duplicate"})
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "case_already_resolved"
    assert await refunds_recorded(container, order["id"]) == ["second_payment"]
    async with container.db.read() as conn:
        closed = (await conn.execute(sa.select(review_cases).where(
            review_cases.c.id == case["id"]))).one()
        audit = (await conn.execute(sa.select(audit_log.c.actor, audit_log.c.action).where(
            audit_log.c.subject_id == case["id"]))).all()
    assert (closed.state, closed.resolution, closed.resolved_by) == (
        "resolved", "matched_manually", "ops:finance-test")
    assert [tuple(a) for a in audit] == [("ops:finance-test", "review_case.matched_manually")]


async def test_a_possible_duplicate_decided_in_its_case_leaves_the_unmatched_list(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """The other way round: the case resolved (refunded as a second transfer), the credit
    stayed in the unmatched list, and a person matching it from there opened a second_payment
    case recommending the same refund again."""
    m = await new_merchant(container)
    order, case = await a_credit_seen_twice(client, container, ops, m)
    r = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops, json={
        "action": "refund", "note": "two transfers on the customer's statement; returned"})
    assert r.status_code == 200, r.text
    listed = (await client.get("/v1/reconciliation/unmatched", headers=ops, params={
        "account_number": m.account_number})).json()["data"]
    assert case["mutation_id"] not in [x["id"] for x in listed]
    match = await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": case["mutation_id"], "order_id": order["id"], "reason": "unmatched"})
    assert match.status_code == 409, match.text
    async with container.db.read() as conn:
        opened = (await conn.execute(sa.select(review_cases.c.reason).where(
            review_cases.c.order_id == order["id"]))).scalars().all()
    assert opened == ["possible_duplicate"]


@pytest.mark.parametrize("actor", ["", "   ", "s" * 200])
async def test_a_cli_resolution_says_who_decided(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], pg_url: str,
    actor: str,
) -> None:
    """The audit log is who, when and why: a blank --actor resolved the case as ``cli:`` (nobody)
    and one longer than the column crashed with the database's error after the decision was
    made. Both are refused by the command line before anything is written."""
    m = await new_merchant(container)
    order = await paid_short(client, container, ops, m)
    case = await open_case(client, ops, order["id"])
    done = subprocess.run([LUNAS, "reviews", "resolve", case["id"], "--action", "honour",
                           "--note", "approved by CS lead", "--actor", actor],
                          env={**os.environ, "LUNAS_DATABASE_URL": pg_url},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    assert "--actor" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert (await open_case(client, ops, order["id"]))["state"] == "open"


async def paid_twice_in_dollars(client: httpx.AsyncClient, container: Container,
                                ops: dict[str, str], m: ShopFixture) -> tuple[str, list[Any]]:
    """A provider reported two payments on one order in dollars (9, then 10): the first put
    the order in review, the second opened a case of the same reason beside it."""
    order = await capture(client, m)
    async with container.db.read() as conn:
        attempt = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == order["id"]))).one()
    for dollars in (9, 10):
        now = datetime.now(UTC)
        async with container.db.transaction() as conn:
            await apply_payment(conn, Payment(
                attempt_id=attempt.id, amount=dollars, evidence_key=f"test:{attempt.id}:{dollars}",
                kind="provider_webhook", observed_at=now, details={}, currency="USD"),
                now=now, quarantine=timedelta(hours=1))
    cases = (await client.get("/v1/reviews", headers=ops, params={"order_id": order["id"]})
             ).json()["data"]
    assert [(c["reason"], c["amount"], c["allowed_actions"]) for c in cases] == [
        ("currency_mismatch", 9, ["honour", "refund"]),
        ("currency_mismatch", 10, ["honour", "refund"])]
    return order["id"], cases


async def told_paid(container: Container, order_id: str) -> dict[str, Any]:
    async with container.db.read() as conn:
        [paid] = (await conn.execute(sa.select(outbox.c.payload).where(
            outbox.c.aggregate_id == order_id, outbox.c.event_type == "order.paid"))
        ).scalars().all()
    return dict(paid)


async def test_refunding_one_of_two_payments_leaves_the_order_to_the_other(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """Either payment may pay the order, so refunding one answers only for that one. Before,
    the refund made the order refunded, and the other payment's case was left asking to honour
    money on an order that could no longer be paid."""
    m = await new_merchant(container)
    order_id, (first, second) = await paid_twice_in_dollars(client, container, ops, m)
    r = await client.post(f"/v1/reviews/{first['id']}/resolve", headers=ops,
                          json={"action": "refund", "note": "9 USD returned by the provider"})
    assert r.status_code == 200, r.text
    read = (await client.get(f"/v1/orders/{order_id}", headers=m.headers)).json()
    assert (read["status"], read["review_reason"]) == ("needs_review", "currency_mismatch")
    r = await client.post(f"/v1/reviews/{second['id']}/resolve", headers=ops,
                          json={"action": "honour", "note": "provider: 150,000 IDR arrived"})
    assert r.status_code == 200, r.text
    read = (await client.get(f"/v1/orders/{order_id}", headers=m.headers)).json()
    assert read["status"] == "paid"
    paid = await told_paid(container, order_id)
    assert (paid["review_case_id"], paid["paid_amount"], paid["paid_currency"]) == (
        second["id"], 10, "USD")


async def test_honouring_the_later_payment_pays_the_order_by_it_and_the_other_stays_a_case(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """A person honours the second payment: the merchant hears the order paid by that one (its
    amount and currency, its case), and the first stays open on the paid order, a payment more
    to refund (or keep) after checking at the source."""
    m = await new_merchant(container)
    order_id, (first, second) = await paid_twice_in_dollars(client, container, ops, m)
    r = await client.post(f"/v1/reviews/{second['id']}/resolve", headers=ops,
                          json={"action": "honour", "note": "provider: 150,000 IDR arrived"})
    assert r.status_code == 200, r.text
    assert r.json()["allowed_actions"] == []
    paid = await told_paid(container, order_id)
    assert (paid["review_case_id"], paid["paid_amount"], paid["paid_currency"]) == (
        second["id"], 10, "USD")
    still = await open_case(client, ops, order_id)
    assert (still["id"], still["state"]) == (first["id"], "open")
    r = await client.post(f"/v1/reviews/{first['id']}/resolve", headers=ops,
                          json={"action": "refund", "note": "9 USD returned"})
    assert r.status_code == 200, r.text
    read = (await client.get(f"/v1/orders/{order_id}", headers=m.headers)).json()
    assert read["status"] == "paid"


async def test_a_payment_on_a_cancelled_order_can_only_be_refunded(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """Honouring money on a cancelled order pays nothing: the order cannot be paid again. It
    was recorded as if it meant something; now it is refused, naming what is allowed."""
    m = await new_merchant(container)
    order = await capture(client, m)
    r = await client.post(f"/v1/orders/{order['id']}/cancel", headers=m.headers)
    assert r.status_code == 200, r.text
    pay = order["payment"]["transfer_amount"]
    await upload(client, ops, m, bca_statement(m.account_number, [
        (datetime.now(UTC), f"TRSF CR {order['id'].upper()}", pay, "CR")]))
    case = await open_case(client, ops, order["id"])
    assert (case["reason"], case["allowed_actions"]) == ("payment_on_closed_order", ["refund"])
    honour = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                               json={"action": "honour", "note": "ship anyway"})
    assert (honour.status_code, honour.json()["field"]) == (422, "action"), honour.text
    assert (await open_case(client, ops, order["id"]))["state"] == "open"


async def paid_wrong_then_exact(client: httpx.AsyncClient, ops: dict[str, str], m: ShopFixture,
                                off_by: int) -> tuple[dict[str, Any], int]:
    """The customer paid ``off_by`` rupiah off (by reference: the order goes to review for the
    amount), noticed, and transferred the exact amount. Returns the order and that amount."""
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    await upload(client, ops, m, bca_statement(m.account_number, [
        (datetime.now(UTC), f"TRSF CR {order['id'].upper()}", pay + off_by, "CR")]))
    await upload(client, ops, m, bca_statement(m.account_number, [
        (datetime.now(UTC), f"TRSF CR {pay} LAGI", pay, "CR")]))
    return order, pay


async def told(container: Container, order_id: str) -> list[Any]:
    async with container.db.read() as conn:
        return list((await conn.execute(sa.select(outbox.c.event_type, outbox.c.payload).where(
            outbox.c.aggregate_id == order_id).order_by(outbox.c.id))).all())


async def test_an_exact_payment_after_a_short_one_pays_the_order_and_the_short_one_goes_back(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """Before, the exact transfer on an order in review for a short one was a payment on a
    closed order, refund only: the order could be paid short (honour the first, refund the
    exact one) or refunded whole, never paid by the payment everyone wanted."""
    m = await new_merchant(container)
    order, pay = await paid_wrong_then_exact(client, ops, m, off_by=-1_007)
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "paid" and read["paid_at"]
    # The merchant hears it paid as by any exact payment: by that payment, nobody's decision.
    [(_, paid)] = [e for e in await told(container, order["id"]) if e.event_type == "order.paid"]
    assert (paid["paid_amount"], paid["evidence"], paid["status"]) == (pay, "mutation", "paid")
    assert "review_case_id" not in paid and "review_reason" not in paid
    # The short payment's case stays open beside the paid order: money to give back.
    case = await open_case(client, ops, order["id"])
    assert (case["reason"], case["amount"], case["state"], case["recommended_action"],
            case["allowed_actions"]) == ("amount_mismatch", pay - 1_007, "open", "refund",
                                         ["refund"])
    honour = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                               json={"action": "honour", "note": "pay the order with it"})
    assert (honour.status_code, honour.json()["code"]) == (422, "action_not_allowed")
    r = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                          json={"action": "refund", "note": "short transfer returned"})
    assert r.status_code == 200, r.text
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "paid"
    # A short payment was recommended for refund already: nothing about its case changed.
    assert "review_case.updated" not in [e.event_type for e in await told(container, order["id"])]


async def test_an_overpayment_left_beside_an_order_paid_exactly_is_recommended_for_refund(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """An overpayment is recommended for honour while it could pay the order; once an exact
    payment paid it, it is money to give back, and the merchant, told 'honour' when the case
    opened, is told the new recommendation."""
    m = await new_merchant(container)
    order, pay = await paid_wrong_then_exact(client, ops, m, off_by=1_000)
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "paid"
    case = await open_case(client, ops, order["id"])
    assert (case["reason"], case["amount"], case["recommended_action"],
            case["allowed_actions"]) == ("amount_mismatch", pay + 1_000, "refund", ["refund"])
    said = await told(container, order["id"])
    opened = [e.payload for e in said if e.event_type == "review_case.opened"]
    assert [(p["case_id"], p["recommended_action"]) for p in opened] == [(case["id"], "honour")]
    assert [e.event_type for e in said][-2:] == ["order.paid", "review_case.updated"]
    updated = said[-1].payload
    assert (updated["case_id"], updated["order_id"], updated["reason"],
            updated["recommended_action"], updated["amount"]) == (
        case["id"], order["id"], "amount_mismatch", "refund", pay + 1_000)
    async with container.db.read() as conn:
        audit = (await conn.execute(sa.select(audit_log.c.actor, audit_log.c.action).where(
            audit_log.c.subject_id == case["id"]))).all()
    assert [tuple(a) for a in audit] == [("lunas", "review_case.recommendation_changed")]


async def test_an_exact_rupiah_payment_pays_an_order_in_review_over_a_foreign_one(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """A payment reported in dollars held the order in review; the customer then paid the
    exact rupiah. The order is paid by it; the dollars, never comparable with the amount,
    stay a case to check at the provider, then refund (or keep)."""
    m = await new_merchant(container)
    order = await capture(client, m)
    pay = order["payment"]["transfer_amount"]
    async with container.db.read() as conn:
        attempt = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id == order["id"]))).one()
    now = datetime.now(UTC)
    async with container.db.transaction() as conn:
        await apply_payment(conn, Payment(
            attempt_id=attempt.id, amount=9, evidence_key=f"test:{attempt.id}:usd",
            kind="provider_webhook", observed_at=now, details={}, currency="USD"),
            now=now, quarantine=timedelta(hours=1))
    await upload(client, ops, m, bca_statement(m.account_number, [
        (datetime.now(UTC), f"TRSF CR {pay}", pay, "CR")]))
    read = (await client.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()
    assert read["status"] == "paid"
    paid = await told_paid(container, order["id"])
    assert (paid["paid_amount"], paid.get("paid_currency")) == (pay, None)
    case = await open_case(client, ops, order["id"])
    assert (case["reason"], case["currency"], case["recommended_action"],
            case["allowed_actions"]) == ("currency_mismatch", "USD", "check_at_source",
                                         ["honour", "refund"])
    assert "review_case.updated" not in [e.event_type for e in await told(container, order["id"])]
