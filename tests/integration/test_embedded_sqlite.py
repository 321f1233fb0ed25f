"""The embedded default (SQLite, in-process state) runs the same code paths as production:
capture, unique amounts, statement import, settlement, expiry and the relay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from orchestrator.bootstrap import build
from orchestrator.services.expiry import expire_due_orders
from orchestrator.services.order_view import iso, wib
from orchestrator.settings import DatabaseSettings, Settings
from orchestrator.store.engine import migrate
from orchestrator.store.tables import orders, outbox
from orchestrator.tls import default_trust
from tests.support import bca_statement, new_merchant, new_ops_token, order_body, serve


async def test_checkout_to_paid_on_sqlite(tmp_path: Path) -> None:
    container = build(Settings(database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/l.db")))
    try:
        await migrate(container.db.engine)
        m = await new_merchant(container)
        ops = {"Authorization": f"Bearer {await new_ops_token(container)}"}
        async with serve(container) as url, httpx.AsyncClient(verify=default_trust(),
                                                              base_url=url, timeout=30) as c:
            replies = await asyncio.gather(*[
                c.post("/v1/orders", json=order_body(f"S-{i}", 120_000),
                       headers={**m.headers, "Idempotency-Key": f"k-{i}"})
                for i in range(20)
            ])
            assert [r.status_code for r in replies] == [201] * 20
            amounts = [r.json()["payment"]["transfer_amount"] for r in replies]
            assert len(set(amounts)) == 20
            replay = await c.post("/v1/orders", json=order_body("S-0", 120_000),
                                  headers={**m.headers, "Idempotency-Key": "k-0"})
            assert replay.headers["idempotent-replayed"] == "true"

            paid = replies[0].json()
            statement = bca_statement(m.account_number, [
                (datetime.now(UTC), "TRSF CR", paid["payment"]["transfer_amount"], "CR")])
            imported = await c.post("/v1/mutations/statements", headers=ops,
                                    files={"file": ("m.csv", statement, "text/csv")},
                                    data={"bank": "bca", "account_number": m.account_number})
            assert imported.json()["matched"] == 1
            read = await c.get(f"/v1/orders/{paid['id']}", headers=m.headers)
            assert read.json()["status"] == "paid"
            record = (await c.get(f"/v1/ops/orders/{paid['id']}", headers=ops)).json()
            assert [(e["kind"], e["amount"]) for e in record["evidence"]] == [
                ("mutation", paid["payment"]["transfer_amount"])]
            assert [line["match_state"] for line in record["mutations"]] == ["matched"]

        later = datetime.now(UTC) + timedelta(days=2)
        assert await expire_due_orders(container.db, now=later, quarantine=timedelta(hours=1),
                                       batch=100) == 19
        async with container.db.read() as conn:
            types = (await conn.execute(sa.select(outbox.c.event_type))).scalars().all()
            told = (await conn.execute(
                sa.select(outbox.c.event_type, outbox.c.payload, orders)
                .join(orders, orders.c.id == outbox.c.aggregate_id)
                .where(outbox.c.event_type.in_(["order.paid", "order.expired"])))).all()
        assert sorted(set(types)) == ["order.captured", "order.expired", "order.paid"]
        assert types.count("order.expired") == 19
        # Each says when, in UTC and in WIB, as the order API does: the deadline, and the
        # moment it was paid (null on an order that expired unpaid).
        for event in told:
            p = event.payload
            assert p["expires_at"] == iso(event.expires_at) and p["expires_at"].endswith("Z")
            assert p["display"]["expires_at"] == wib(event.expires_at)
            if event.event_type == "order.paid":
                assert p["paid_at"] == read.json()["paid_at"] == iso(event.paid_at)
                assert p["display"] == read.json()["display"]
            else:
                assert (p["paid_at"], p["display"]["paid_at"]) == (None, None)
    finally:
        await container.close()


async def test_unreadable_feed_items_on_sqlite(tmp_path: Path) -> None:
    """Kept once, closed by a corrected listing or by a person: the same statements on SQLite."""
    from orchestrator.reconciliation.fingerprint import fingerprint_moota
    from orchestrator.reconciliation.moota import unreadable_item
    from orchestrator.store.tables import mutations

    container = build(Settings(database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/u.db")))
    try:
        await migrate(container.db.engine)
        items = container.unreadable_feed_items
        now = datetime.now(UTC)
        odd = [unreadable_item({"mutation_id": f"mt{n}", "amount": "1,5"}, "bad amount")
               for n in range(2)]
        assert len(await items.keep("moota", odd, now=now)) == 2
        assert await items.keep("moota", odd, now=now) == []
        async with container.db.transaction() as conn:  # a readable mt0 was stored since
            await conn.execute(mutations.insert().values(
                id="mut_mt0", bank="bca", account_number="0123456789", posted_at=now,
                amount=1_500, direction="CR", description="TRSF", source="feed",
                fingerprint=fingerprint_moota("mt0"), match_state="unmatched", created_at=now))
        assert await items.close_read("moota", now=now) == 1
        [left] = await items.listing(state="open", limit=10)
        closed = await items.handled(left["id"], actor="cli:sari", note="no order", now=now)
        assert (closed["mutation_ref"], closed["state"]) == ("mt1", "handled")
        assert sorted((i["mutation_ref"], i["state"])
                      for i in await items.listing(state=None, limit=10)) == [
            ("mt0", "read"), ("mt1", "handled")]
    finally:
        await container.close()


async def test_a_merchants_endpoint_changes_on_sqlite(tmp_path: Path) -> None:
    """URL and secret changed with the same statements on SQLite; the delivery signs under both
    secrets through the overlap."""
    from orchestrator.domain.clock import FrozenClock
    from orchestrator.notify.delivery import MerchantWebhookHandler
    from orchestrator.notify.egress import OPEN
    from orchestrator.notify.signing import verify
    from orchestrator.outbox.relay import OutboxEvent
    from orchestrator.services.webhook_endpoints import rotate_webhook_secret, set_webhook_url
    from tests.e2e.test_checkout_to_webhook import WebhookReceiver

    container = build(Settings(database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/w.db")))
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        await migrate(container.db.engine)
        m = await new_merchant(container)
        now = datetime.now(UTC)
        await set_webhook_url(container.db, merchant_id=m.merchant_id,
                              url=f"http://127.0.0.1:{receiver.port}/hooks", actor="cli:sari",
                              reason=None, now=now, egress=OPEN)
        rotated = await rotate_webhook_secret(container.db, merchant_id=m.merchant_id,
                                              overlap=timedelta(hours=1), actor="cli:sari",
                                              reason=None, now=now)
        async with httpx.AsyncClient(verify=default_trust(), trust_env=False) as http:
            handler = MerchantWebhookHandler(container.db.engine, http, timedelta(seconds=5),
                                             clock=FrozenClock(now + timedelta(minutes=59)))
            await handler(OutboxEvent(id=0, event_id="evt_1", event_type="order.paid",
                                      aggregate_id="ord_1", merchant_id=m.merchant_id,
                                      payload={}, attempts=1, created_at=now))
        [(headers, body)] = receiver.deliveries
        ts = int(headers["lunas-timestamp"])
        for secret in (rotated.webhook_secret, m.webhook_secret):
            assert verify(secret, body, headers["lunas-signature"], now_ts=ts)
        assert headers["lunas-signature"].count("v1=") == 2
    finally:
        await receiver.stop()
        await container.close()


async def test_a_debit_uploaded_before_its_credit_flags_the_order_on_sqlite(
    tmp_path: Path,
) -> None:
    """Statements uploaded out of order (the correction first): the credit, matched after it,
    finds the debit stored before it and opens the possible reversal, on SQLite too."""
    from orchestrator.store.tables import mutations, review_cases

    container = build(Settings(database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/r.db")))
    try:
        await migrate(container.db.engine)
        m = await new_merchant(container)
        ops = {"Authorization": f"Bearer {await new_ops_token(container)}"}
        async with serve(container) as url, httpx.AsyncClient(verify=default_trust(),
                                                              base_url=url, timeout=30) as c:
            order = (await c.post("/v1/orders", json=order_body("R-1", 120_000),
                                  headers={**m.headers, "Idempotency-Key": "r-1"})).json()
            pay = order["payment"]["transfer_amount"]
            replies = []
            for line in ((datetime.now(UTC), "KOREKSI TRSF CR", pay, "DB"),
                         (datetime.now(UTC), "TRSF CR", pay, "CR")):
                r = await c.post("/v1/mutations/statements", headers=ops,
                                 files={"file": ("m.csv", bca_statement(m.account_number, [line]),
                                                 "text/csv")},
                                 data={"bank": "bca", "account_number": m.account_number})
                assert r.status_code == 201, r.text
                replies.append(r.json())
            assert [(r["matched"], r["possible_reversals"]) for r in replies] == [(0, 0), (1, 1)]
            assert (await c.get(f"/v1/orders/{order['id']}", headers=m.headers)).json()[
                "status"] == "paid"
        async with container.db.read() as conn:
            cases = (await conn.execute(sa.select(review_cases.c.reason, review_cases.c.mutation_id)
                                        .where(review_cases.c.order_id == order["id"]))).all()
            debit = (await conn.execute(sa.select(mutations.c.id, mutations.c.match_state,
                                                  mutations.c.order_id)
                                        .where(mutations.c.direction == "DB"))).one()
            told = (await conn.execute(sa.select(outbox.c.event_type).where(
                outbox.c.aggregate_id == order["id"],
                outbox.c.event_type == "review_case.opened"))).scalars().all()
        assert cases == [("possible_reversal", debit.id)]
        assert (debit.match_state, debit.order_id) == ("reversal", order["id"])
        assert told == ["review_case.opened"]
    finally:
        await container.close()
