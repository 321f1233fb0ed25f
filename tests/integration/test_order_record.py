"""An order's payment record (GET /v1/ops/orders/{id}): what finance and SREs look at when an
alert, a case or a customer names an order, instead of querying the database by hand."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orchestrator.bootstrap import Container
from orchestrator.store.merchants import create_ops_token
from tests.integration.test_review_cases import a_credit_seen_twice, paid_short
from tests.support import new_merchant, new_ops_token


@pytest.fixture(scope="module")
async def ops(container: Container) -> dict[str, str]:
    return {"Authorization": f"Bearer {await new_ops_token(container)}"}


async def record(client: httpx.AsyncClient, ops: dict[str, str], order_id: str
                 ) -> dict[str, Any]:
    r = await client.get(f"/v1/ops/orders/{order_id}", headers=ops)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_short_payment_shows_its_instrument_its_evidence_its_bank_line_and_its_case(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    order = await paid_short(client, container, ops, m)
    seen = await record(client, ops, order["id"])
    assert seen["order"]["id"] == order["id"]
    assert (seen["order"]["status"], seen["order"]["review_reason"]) == (
        "needs_review", "amount_mismatch")
    assert seen["order"]["merchant_id"] == m.merchant_id
    [attempt] = seen["attempts"]
    assert attempt["id"] == order["payment"]["attempt_id"]
    assert attempt["transfer_amount"] == order["payment"]["transfer_amount"]
    assert attempt["payout_account"]["account_number"] == m.account_number
    [line] = seen["mutations"]
    assert (line["direction"], line["amount"]) == ("CR", order["payment"]["transfer_amount"]
                                                   - 1_000)
    assert [(e["attempt_id"], e["amount"]) for e in seen["evidence"]] == [
        (attempt["id"], line["amount"])]
    [case] = seen["review_cases"]
    assert (case["reason"], case["state"], case["amount"]) == ("amount_mismatch", "open",
                                                              line["amount"])
    assert case["allowed_actions"] == ["honour", "refund"]  # as the review queue lists it


async def test_what_people_did_about_its_cases_and_bank_lines_is_in_its_record(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    """A credit seen twice (push, then the bank's file); a person decides the duplicate case:
    the decision, who made it and why, is in the order's record beside both bank lines."""
    m = await new_merchant(container)
    order, case = await a_credit_seen_twice(client, container, ops, m)
    r = await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                          json={"action": "refund", "note": "one transfer; copy refunded"})
    assert r.status_code == 200, r.text
    seen = await record(client, ops, order["id"])
    assert seen["order"]["status"] == "paid"
    assert sorted(line["source"] for line in seen["mutations"]) == ["push", "statement"]
    assert [(a["subject_type"], a["subject_id"], a["reason"]) for a in seen["audit"]
            if a["subject_type"] == "review_case"] == [
        ("review_case", case["id"], "one transfer; copy refunded")]
    assert all(a["actor"].startswith("ops:") for a in seen["audit"])


async def test_another_order_s_audit_is_not_in_this_record(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    m = await new_merchant(container)
    decided, case = await a_credit_seen_twice(client, container, ops, m)
    await client.post(f"/v1/reviews/{case['id']}/resolve", headers=ops,
                      json={"action": "refund", "note": "copy refunded"})
    other = await paid_short(client, container, ops, m)
    seen = await record(client, ops, other["id"])
    assert seen["audit"] == []
    assert {line["id"] for line in seen["mutations"]}.isdisjoint(
        line["id"] for line in (await record(client, ops, decided["id"]))["mutations"])


async def test_an_unknown_order_is_404_and_a_merchant_key_or_no_scope_is_refused(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str]
) -> None:
    missing = await client.get("/v1/ops/orders/ord_nothing_here", headers=ops)
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    m = await new_merchant(container)
    as_merchant = await client.get("/v1/ops/orders/ord_nothing_here", headers=m.headers)
    assert as_merchant.status_code == 401
    async with container.db.transaction() as conn:
        _, sre = await create_ops_token(conn, name="sre-only", scopes=("ops",),
                                        now=container.clock.now())
    by_sre = await client.get("/v1/ops/orders/ord_nothing_here",
                              headers={"Authorization": f"Bearer {sre}"})
    assert by_sre.status_code == 404  # an SRE's token reads records too
