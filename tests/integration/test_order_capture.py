"""Capture: an order is written once per idempotency key and answered with bank-transfer
instructions whose transfer amount is unique on the payout account."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import httpx
import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.services.order_view import wib
from orchestrator.store.tables import idempotency_keys, orders, outbox, payment_attempts
from orchestrator.tls import default_trust
from tests.support import ShopFixture, new_merchant, order_body


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def count_orders(container: Container, merchant_id: str) -> int:
    async with container.db.read() as conn:
        return int((await conn.execute(
            sa.select(sa.func.count()).select_from(orders)
            .where(orders.c.merchant_id == merchant_id)
        )).scalar_one())


async def test_capture_returns_transfer_instructions_with_unique_amount(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    r = await client.post("/v1/orders", json=order_body("INV-1", 150_000),
                          headers={**m.headers, **key()})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "awaiting_payment"
    assert body["amount"] == 150_000
    pay = body["payment"]
    assert pay["rail"] == "manual_transfer"
    assert (pay["bank"], pay["account_number"], pay["account_name"]) == ("bca", m.account_number,
                                                                         "TOKO UJI")
    assert 1 <= pay["transfer_amount"] - 150_000 <= 999
    assert pay["transfer_amount"] == 150_000 + pay["unique_code"]
    assert pay["display"]["expires_at"].endswith("WIB")
    assert body["created_at"].endswith("Z") and body["expires_at"].endswith("Z")
    assert body["paid_at"] is None
    assert body["display"] == {"amount": "Rp150.000", "paid_at": None,
                               "expires_at": wib(datetime.fromisoformat(body["expires_at"]))}
    assert r.headers["location"] == f"/v1/orders/{body['id']}"
    async with container.db.read() as conn:
        events = (await conn.execute(sa.select(outbox.c.event_type)
                                     .where(outbox.c.aggregate_id == body["id"]))).scalars().all()
    assert events == ["order.captured"]


async def test_repeat_with_same_key_and_body_replays_the_stored_response(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    headers = {**m.headers, **key()}
    first = await client.post("/v1/orders", json=order_body("INV-2"), headers=headers)
    again = await client.post("/v1/orders", json=order_body("INV-2"), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.json() == first.json()
    assert await count_orders(container, m.merchant_id) == 1


async def test_same_key_with_another_body_is_a_conflict(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    headers = {**m.headers, **key()}
    assert (await client.post("/v1/orders", json=order_body("INV-3", 10_000),
                              headers=headers)).status_code == 201
    for changed in (order_body("INV-3", 20_000), order_body("INV-3b", 10_000)):
        r = await client.post("/v1/orders", json=changed, headers=headers)
        assert r.status_code == 409
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "idempotency_key_reused"
    assert await count_orders(container, m.merchant_id) == 1


async def test_second_order_with_same_merchant_order_id_names_the_existing_order(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    first = await client.post("/v1/orders", json=order_body("INV-4"),
                              headers={**m.headers, **key()})
    r = await client.post("/v1/orders", json=order_body("INV-4"), headers={**m.headers, **key()})
    assert r.status_code == 409
    assert r.json()["code"] == "duplicate_merchant_order_id"
    assert r.json()["existing_order_id"] == first.json()["id"]


async def test_fifty_concurrent_repeats_of_one_key_make_one_order(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    headers = {**m.headers, **key()}
    replies = await asyncio.gather(*[
        client.post("/v1/orders", json=order_body("INV-5"), headers=headers) for _ in range(50)
    ])
    assert {r.status_code for r in replies} == {201}
    assert len({r.json()["id"] for r in replies}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in replies) == 49
    assert await count_orders(container, m.merchant_id) == 1
    async with container.db.read() as conn:
        attempts = (await conn.execute(
            sa.select(sa.func.count()).select_from(payment_attempts)
            .where(payment_attempts.c.order_id == replies[0].json()["id"]))).scalar_one()
    assert attempts == 1


async def test_concurrent_captures_never_share_a_transfer_amount(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    replies = await asyncio.gather(*[
        client.post("/v1/orders", json=order_body(f"INV-6-{i}", 50_000),
                    headers={**m.headers, **key()})
        for i in range(120)
    ])
    assert {r.status_code for r in replies} == {201}
    amounts = [r.json()["payment"]["transfer_amount"] for r in replies]
    assert len(set(amounts)) == len(amounts) == 120


async def test_exhausted_code_range_is_a_clear_503_and_stores_nothing(
    container: Container, base_url: str
) -> None:
    from dataclasses import replace

    from orchestrator.bootstrap import build
    from orchestrator.domain.money import UniqueCodeRange
    from orchestrator.settings import UniqueCodeSettings
    from tests.support import serve

    small = replace(container.settings,
                    unique_codes=UniqueCodeSettings(codes=UniqueCodeRange(low=1, high=5)))
    narrow = build(small)
    try:
        m = await new_merchant(narrow)
        async with serve(narrow) as url, httpx.AsyncClient(verify=default_trust(),
                                                           base_url=url) as c:
            replies = await asyncio.gather(*[
                c.post("/v1/orders", json=order_body(f"INV-7-{i}", 77_000),
                       headers={**m.headers, **key()})
                for i in range(8)
            ])
            exposition = (await c.get("/metrics")).text
        statuses = sorted(r.status_code for r in replies)
        assert statuses == [201] * 5 + [503] * 3
        refused = next(r for r in replies if r.status_code == 503)
        assert refused.json()["code"] == "unique_codes_exhausted"
        assert refused.headers["retry-after"]
        assert await count_orders(narrow, m.merchant_id) == 5
        amounts = {r.json()["payment"]["transfer_amount"] for r in replies if r.status_code == 201}
        assert amounts == {77_001, 77_002, 77_003, 77_004, 77_005}
        assert 'lunas_unique_codes_exhausted_total{rail="manual_transfer"} 3.0' in exposition
        assert 'lunas_orders_captured_total{outcome="created",rail="manual_transfer"} 5.0' in (
            exposition)
    finally:
        await narrow.close()


async def test_merchant_reads_and_finds_its_own_orders_only(
    client: httpx.AsyncClient, container: Container
) -> None:
    owner, other = await new_merchant(container), await new_merchant(container)
    created = (await client.post("/v1/orders", json=order_body("INV-8"),
                                 headers={**owner.headers, **key()})).json()
    mine = await client.get(f"/v1/orders/{created['id']}", headers=owner.headers)
    assert mine.status_code == 200
    assert mine.json()["payment"]["transfer_amount"] == created["payment"]["transfer_amount"]
    found = await client.get("/v1/orders", params={"merchant_order_id": "INV-8"},
                             headers=owner.headers)
    assert [o["id"] for o in found.json()["data"]] == [created["id"]]
    foreign = await client.get(f"/v1/orders/{created['id']}", headers=other.headers)
    assert foreign.status_code == 404
    assert (await client.get("/v1/orders", params={"merchant_order_id": "INV-8"},
                             headers=other.headers)).json()["data"] == []
    assert (await client.post(f"/v1/orders/{created['id']}/cancel",
                              headers=other.headers)).status_code == 404


async def test_cancel_closes_the_order_once_and_tells_the_merchant(
    client: httpx.AsyncClient, container: Container
) -> None:
    m = await new_merchant(container)
    created = (await client.post("/v1/orders", json=order_body("INV-9"),
                                 headers={**m.headers, **key()})).json()
    r = await client.post(f"/v1/orders/{created['id']}/cancel", headers=m.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["payment"]["status"] == "failed"
    again = await client.post(f"/v1/orders/{created['id']}/cancel", headers=m.headers)
    assert again.status_code == 409 and again.json()["code"] == "transition_refused"
    async with container.db.read() as conn:
        events = (await conn.execute(sa.select(outbox.c.event_type)
                                     .where(outbox.c.aggregate_id == created["id"])
                                     .order_by(outbox.c.id))).scalars().all()
    assert events == ["order.captured", "order.cancelled"]


class TestBadInputIsAClear4xxAndStoresNothing:
    async def _refused(self, client: httpx.AsyncClient, container: Container, m: ShopFixture,
                       status: int, **request: object) -> dict[str, object]:
        before = await count_orders(container, m.merchant_id)
        r = await client.post("/v1/orders", **request)  # type: ignore[arg-type]
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["status"] == status and problem["detail"] and problem["code"]
        assert "Traceback" not in r.text
        assert await count_orders(container, m.merchant_id) == before
        return dict(problem)

    async def test_malformed_json(self, client: httpx.AsyncClient, container: Container) -> None:
        m = await new_merchant(container)
        p = await self._refused(client, container, m, 400,
                                content=b'{"merchant_order_id": "x",',
                                headers={**m.headers, **key(),
                                         "content-type": "application/json"})
        assert p["code"] == "malformed_json" and "not valid JSON" in str(p["detail"])

    async def test_wrong_types(self, client: httpx.AsyncClient, container: Container) -> None:
        m = await new_merchant(container)
        for amount in ("150000", 150000.5, True, None):
            p = await self._refused(client, container, m, 400,
                                    json=order_body("BAD-1", amount),  # type: ignore[arg-type]
                                    headers={**m.headers, **key()})
            assert "amount" in str(p)

    async def test_unknown_field_is_named(self, client: httpx.AsyncClient,
                                          container: Container) -> None:
        m = await new_merchant(container)
        p = await self._refused(client, container, m, 400,
                                json={**order_body("BAD-2"), "amout": 1},
                                headers={**m.headers, **key()})
        assert "amout" in str(p)

    async def test_currency_may_be_echoed_but_is_only_rupiah(self, client: httpx.AsyncClient,
                                                             container: Container) -> None:
        """Replies carry "currency": "IDR", so a checkout may send it back: the same order as
        without it (one idempotency fingerprint). Any other currency is refused, never taken
        as rupiah."""
        m = await new_merchant(container)
        headers = {**m.headers, **key()}
        first = await client.post("/v1/orders", headers=headers,
                                  json={**order_body("CUR-1"), "currency": "IDR"})
        assert first.status_code == 201, first.text
        again = await client.post("/v1/orders", headers=headers, json=order_body("CUR-1"))
        assert again.headers["idempotent-replayed"] == "true"
        for currency in ("USD", "idr", ""):
            p = await self._refused(client, container, m, 422,
                                    json={**order_body("CUR-2"), "currency": currency},
                                    headers={**m.headers, **key()})
            assert p["field"] == "currency"

    async def test_negative_zero_and_huge_amounts(self, client: httpx.AsyncClient,
                                                  container: Container) -> None:
        m = await new_merchant(container)
        for amount in (-5, 0, 10**12, 10**30):
            p = await self._refused(client, container, m, 422,
                                    json=order_body("BAD-3", amount),
                                    headers={**m.headers, **key()})
            assert "amount" in str(p)

    async def test_missing_idempotency_key(self, client: httpx.AsyncClient,
                                           container: Container) -> None:
        m = await new_merchant(container)
        p = await self._refused(client, container, m, 400, json=order_body("BAD-4"),
                                headers=m.headers)
        assert p["code"] == "idempotency_key_required"

    async def test_missing_or_wrong_api_key(self, client: httpx.AsyncClient,
                                            container: Container) -> None:
        m = await new_merchant(container)
        await self._refused(client, container, m, 401, json=order_body("BAD-5"), headers=key())
        await self._refused(client, container, m, 401, json=order_body("BAD-5"),
                            headers={"Authorization": "Bearer lunas_sk_forged", **key()})

    async def test_bad_customer_rail_expiry_and_metadata(self, client: httpx.AsyncClient,
                                                         container: Container) -> None:
        m = await new_merchant(container)
        cases = [
            ({**order_body("BAD-6"), "customer": {"name": "A", "email": "no-at-sign",
                                                  "phone": "0812345678"}}, "customer.email"),
            ({**order_body("BAD-6"), "rail": "crypto"}, "rail"),
            ({**order_body("BAD-6"), "expires_in": 5}, "expires_in"),
            ({**order_body("BAD-6"), "metadata": {"blob": "x" * 5000}}, "metadata"),
            (order_body("has space"), "merchant_order_id"),
        ]
        for body, field in cases:
            p = await self._refused(client, container, m, 422, json=body,
                                    headers={**m.headers, **key()})
            assert p["field"] == field

    async def test_foreign_and_unknown_order_ids(self, client: httpx.AsyncClient,
                                                 container: Container) -> None:
        m = await new_merchant(container)
        for order_id in ("ord_00000000000000000000000000", "../../etc/passwd", "x" * 300):
            r = await client.get(f"/v1/orders/{order_id}", headers=m.headers)
            assert r.status_code == 404
            assert r.headers["content-type"].startswith("application/problem+json")


async def test_idempotency_rows_are_per_merchant(client: httpx.AsyncClient,
                                                 container: Container) -> None:
    a, b = await new_merchant(container), await new_merchant(container)
    shared = key()
    ra = await client.post("/v1/orders", json=order_body("SAME"), headers={**a.headers, **shared})
    rb = await client.post("/v1/orders", json=order_body("SAME"), headers={**b.headers, **shared})
    assert ra.status_code == rb.status_code == 201
    assert ra.json()["id"] != rb.json()["id"]
    async with container.db.read() as conn:
        n = (await conn.execute(sa.select(sa.func.count()).select_from(idempotency_keys)
                                .where(idempotency_keys.c.key == shared["Idempotency-Key"]))
             ).scalar_one()
    assert n == 2


async def test_database_unreachable_is_a_fast_503_with_retry_after(container: Container) -> None:
    from dataclasses import replace

    from orchestrator.bootstrap import build
    from orchestrator.settings import DatabaseSettings
    from tests.support import free_port, serve

    dead = build(replace(container.settings, database=DatabaseSettings(
        url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere")))
    try:
        async with serve(dead) as url, httpx.AsyncClient(verify=default_trust(), base_url=url) as c:
            r = await c.post("/v1/orders", json=order_body("DB-DOWN"),
                             headers={"Authorization": "Bearer lunas_sk_x", **key()})
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "database_unavailable" and r.headers["retry-after"]
    finally:
        await dead.close()


async def test_a_transaction_postgresql_ends_for_a_deadlock_is_a_503_to_send_again(
    container: Container,
) -> None:
    """A deadlock (or serialization failure) rolls the whole transaction back: nothing was
    stored, the same request again is safe, so the client is told to retry, not 'internal
    error'. The exception is PostgreSQL's own, from a deadlock made on purpose."""
    import asyncio

    from litestar.testing import RequestFactory
    from sqlalchemy.exc import DBAPIError

    from orchestrator.api.errors import status_for, to_response

    m = await new_merchant(container)
    engine = container.db.engine
    async with engine.connect() as one, engine.connect() as two:
        first, second = await one.begin(), await two.begin()
        await one.execute(sa.text("SELECT 1 FROM merchants WHERE id = :i FOR UPDATE"),
                          {"i": m.merchant_id})
        await two.execute(sa.text("SELECT 1 FROM payout_accounts WHERE merchant_id = :i "
                                  "FOR UPDATE"), {"i": m.merchant_id})
        results = await asyncio.gather(
            one.execute(sa.text("SELECT 1 FROM payout_accounts WHERE merchant_id = :i "
                                "FOR UPDATE"), {"i": m.merchant_id}),
            two.execute(sa.text("SELECT 1 FROM merchants WHERE id = :i FOR UPDATE"),
                        {"i": m.merchant_id}),
            return_exceptions=True)
        await first.rollback()
        await second.rollback()
    [deadlock] = [r for r in results if isinstance(r, DBAPIError)]
    assert status_for(deadlock) == 503
    response = to_response(RequestFactory().post("/v1/mutations/push"), deadlock)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
