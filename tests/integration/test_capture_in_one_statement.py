"""On PostgreSQL a manual-transfer capture writes its four rows (order, attempt, order.captured
event, idempotent reply) in one statement (``services/capture_statement.py``). It must write
exactly what the four-statement path writes, and fall back to that path's way of proposing an
amount when its blind proposal is held."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.domain.checkout import Customer, OrderRequest
from orchestrator.domain.errors import IdempotencyKeyReused
from orchestrator.services.capture import CaptureService
from orchestrator.settings import UniqueCodeSettings
from orchestrator.store.tables import idempotency_keys, orders, outbox, payment_attempts
from tests.support import ShopFixture, new_merchant


def _service(container: Container, *, one_statement: bool, seed: int,
             codes: UniqueCodeSettings | None = None) -> CaptureService:
    from orchestrator.bootstrap import checkout_rules

    return CaptureService(container.db, rules=checkout_rules(container.settings),
                          codes=codes or container.settings.unique_codes, clock=container.clock,
                          metrics=container.metrics, rng=random.Random(seed),
                          one_statement=one_statement)


def _request(merchant_order_id: str) -> OrderRequest:
    return OrderRequest(merchant_order_id=merchant_order_id, amount=75_000,
                        customer=Customer(name="Sari", email="sari@example.id",
                                          phone="081298765432"), metadata={"cart": [1, 2]})


async def _rows(container: Container, order_id: str) -> dict[str, list[dict[str, Any]]]:
    async with container.db.read() as conn:
        def read(query: Any) -> list[dict[str, Any]]:
            return [dict(r._mapping) for r in query]
        return {
            "orders": read(await conn.execute(sa.select(orders).where(orders.c.id == order_id))),
            "attempts": read(await conn.execute(sa.select(payment_attempts).where(
                payment_attempts.c.order_id == order_id))),
            "events": read(await conn.execute(sa.select(outbox).where(
                outbox.c.aggregate_id == order_id))),
            "replies": read(await conn.execute(sa.select(idempotency_keys).where(
                idempotency_keys.c.order_id == order_id))),
        }


_OWN = {"id", "order_id", "event_id", "aggregate_id", "merchant_order_id", "key",
        "created_at", "updated_at", "available_at", "expires_at", "response_body",
        "payout_account_number", "transfer_amount", "unique_code", "payload", "request_hash"}


def _shape(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The rows without what differs between any two orders (ids, times, amounts drawn)."""
    return {table: [{k: v for k, v in row.items() if k not in _OWN} for row in found]
            for table, found in rows.items()}


async def test_one_statement_writes_the_rows_the_four_statements_write(
    container: Container,
) -> None:
    shop = await new_merchant(container)
    outcomes = []
    for one_statement, name in ((True, "ONE-1"), (False, "FOUR-1")):
        service = _service(container, one_statement=one_statement, seed=7)
        outcome = await service.capture(merchant_id=shop.merchant_id, idempotency_key=name,
                                        request=_request(name))
        assert outcome.status_code == 201
        outcomes.append((outcome, await _rows(container, outcome.body["id"])))
    (one, one_rows), (four, four_rows) = outcomes
    assert _shape(one_rows) == _shape(four_rows)
    for rows, outcome in ((one_rows, one), (four_rows, four)):
        assert [len(found) for found in rows.values()] == [1, 1, 1, 1]
        [attempt], [event], [reply] = rows["attempts"], rows["events"], rows["replies"]
        assert reply["response_body"] == outcome.body
        assert event["payload"]["payment"] == outcome.body["payment"]
        assert attempt["transfer_amount"] == outcome.body["payment"]["transfer_amount"]
        assert attempt["unique_code"] == outcome.body["payment"]["unique_code"]


async def test_a_held_blind_proposal_falls_back_to_a_free_amount(container: Container) -> None:
    """Two services drawing the same random numbers propose the same amount first: the second
    finds it held and proposes another, writing its order once and each other row once."""
    shop: ShopFixture = await new_merchant(container)
    first = await _service(container, one_statement=True, seed=11).capture(
        merchant_id=shop.merchant_id, idempotency_key="k-1", request=_request("HELD-1"))
    second = await _service(container, one_statement=True, seed=11).capture(
        merchant_id=shop.merchant_id, idempotency_key="k-2", request=_request("HELD-2"))
    assert second.status_code == 201
    taken = first.body["payment"]["transfer_amount"]
    assert second.body["payment"]["transfer_amount"] != taken
    rows = await _rows(container, second.body["id"])
    assert [len(found) for found in rows.values()] == [1, 1, 1, 1]
    assert rows["replies"][0]["response_body"] == second.body
    assert rows["attempts"][0]["transfer_amount"] == second.body["payment"]["transfer_amount"]


async def test_a_taken_key_or_merchant_order_id_writes_nothing(container: Container) -> None:
    shop = await new_merchant(container)
    service = _service(container, one_statement=True, seed=3)
    first = await service.capture(merchant_id=shop.merchant_id, idempotency_key="same",
                                  request=_request("DUP-1"))
    replay = await service.capture(merchant_id=shop.merchant_id, idempotency_key="same",
                                   request=_request("DUP-1"))
    assert replay.replayed and replay.body == first.body
    async with container.db.read() as conn:
        counted = (await conn.execute(sa.select(sa.func.count()).select_from(orders).where(
            orders.c.merchant_id == shop.merchant_id))).scalar_one()
        attempts = (await conn.execute(sa.select(sa.func.count()).select_from(
            payment_attempts).join(orders, orders.c.id == payment_attempts.c.order_id).where(
            orders.c.merchant_id == shop.merchant_id))).scalar_one()
    assert (counted, attempts) == (1, 1)


# -- at once: what the statement's uniqueness guards must hold under concurrency ---------------

async def _attempt(service: CaptureService, shop: ShopFixture, key: str, name: str
                   ) -> tuple[int, str | None, bool]:
    """(status, order id, replayed) of one capture; a refused one as its status."""
    try:
        outcome = await service.capture(merchant_id=shop.merchant_id, idempotency_key=key,
                                        request=_request(name))
    except IdempotencyKeyReused:
        return 409, None, False
    return outcome.status_code, outcome.body["id"], outcome.replayed


async def test_captures_racing_on_one_key_make_one_order_whatever_their_bodies(
    container: Container,
) -> None:
    """Six captures at once on one key, three with each of two bodies, twenty times: one order
    each time, its body's captures all get it, the other body's are refused, and every row of
    the order is written once."""
    shop = await new_merchant(container)
    services = [_service(container, one_statement=True, seed=n) for n in range(6)]
    for round_ in range(20):
        key = f"race-{round_}"
        results = await asyncio.gather(*[
            _attempt(service, shop, key, f"RACE-{round_}-{n % 2}")
            for n, service in enumerate(services)])
        made = {order_id for status, order_id, _ in results if order_id is not None}
        assert len(made) == 1, results
        [order_id] = made
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [201, 201, 201, 409, 409, 409], results
        assert sum(replayed for _, _, replayed in results) == 2
        rows = await _rows(container, order_id)
        assert [len(found) for found in rows.values()] == [1, 1, 1, 1]
    async with container.db.read() as conn:
        counted = (await conn.execute(sa.select(sa.func.count()).select_from(orders).where(
            orders.c.merchant_id == shop.merchant_id))).scalar_one()
    assert counted == 20


async def test_captures_drawing_the_same_blind_amount_at_once_each_get_their_own(
    container: Container,
) -> None:
    """Eight services with one seed propose the same amount first, at the same moment: one
    keeps it, the others fall back to a free one; no amount is shared, no row is doubled."""
    shop = await new_merchant(container)
    outcomes = await asyncio.gather(*[
        _service(container, one_statement=True, seed=99).capture(
            merchant_id=shop.merchant_id, idempotency_key=f"blind-{n}",
            request=_request(f"BLIND-{n}"))
        for n in range(8)])
    assert [o.status_code for o in outcomes] == [201] * 8
    amounts = [o.body["payment"]["transfer_amount"] for o in outcomes]
    assert len(set(amounts)) == 8
    for outcome in outcomes:
        rows = await _rows(container, outcome.body["id"])
        assert [len(found) for found in rows.values()] == [1, 1, 1, 1]
        assert rows["attempts"][0]["transfer_amount"] == outcome.body["payment"]["transfer_amount"]
