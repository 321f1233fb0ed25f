"""The batch statement import writes exactly what the line-by-line import writes.

One scenario, played twice on two merchants: once through the batch path (the default on
PostgreSQL), once line by line. Every line kind the matcher distinguishes is in it: a plain
payment, an unknown credit, a debit, a reference with the wrong amount, an order paid twice, an
expired order, a credit already seen from Moota, a credit dated before its order's window.
"""

from __future__ import annotations

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
from orchestrator.domain.clock import FrozenClock
from orchestrator.domain.money import format_idr
from orchestrator.notify.delivery import webhook_body
from orchestrator.outbox.relay import OutboxEvent
from orchestrator.services.order_view import event_payload, iso, wib
from orchestrator.services.reconciliation import ImportReport, ReconciliationService
from orchestrator.store.tables import (
    evidence,
    mutations,
    orders,
    outbox,
    payment_attempts,
    review_cases,
)
from tests.integration.test_reconciliation import capture, moota_body
from tests.support import ShopFixture, bca_statement, new_merchant


def line_by_line(container: Container) -> ReconciliationService:
    return ReconciliationService(container.db, clock=container.clock, metrics=container.metrics,
                                 quarantine=container.settings.unique_codes.quarantine,
                                 batch_statements=False)


async def scenario(client: httpx.AsyncClient, container: Container, m: ShopFixture
                   ) -> tuple[list[str], bytes]:
    """Orders for ``m`` and the statement that pays them; returns the order ids in a fixed
    order and the statement."""
    now = datetime.now(UTC)
    created = [await capture(client, m, 300_000 + 1_000 * i) for i in range(8)]
    ids = [o["id"] for o in created]
    pay = [o["payment"]["transfer_amount"] for o in created]
    async with container.db.transaction() as conn:  # order 5 expired before it was paid
        await conn.execute(orders.update().where(orders.c.id == ids[5]).values(state="expired"))
        await conn.execute(payment_attempts.update().where(
            payment_attempts.c.order_id == ids[5]).values(
            state="expired", closed_at=now, code_held_until=now + timedelta(hours=1)))
        # Order 3 had other instruments before the customer chose this transfer: a QRIS the
        # customer abandoned (still watched) and an earlier transfer that failed while holding
        # its amount. Settling order 3 retires the first and starts the second's quarantine.
        earlier = {"order_id": ids[3], "created_at": now - timedelta(minutes=30),
                   "updated_at": now - timedelta(minutes=30), "expires_at": now + timedelta(days=1)}
        await conn.execute(payment_attempts.insert(), [
            {**earlier, "id": f"att_{uuid.uuid4().hex[:26]}", "rail": "qris",
             "provider": "midtrans", "state": "superseded", "transfer_amount": pay[3],
             "payout_bank": None, "payout_account_number": None, "holds_code": False},
            {**earlier, "id": f"att_{uuid.uuid4().hex[:26]}", "rail": "manual_transfer",
             "provider": "bank", "state": "failed", "transfer_amount": 9_900_000 + len(pay),
             "payout_bank": "bca", "payout_account_number": m.account_number,
             "holds_code": True},
        ])
    body = moota_body(m.account_number, pay[6])  # order 6 already paid through Moota
    signature = hmac.new(container.settings.mutation_push_secret.encode(), body,
                         hashlib.sha256).hexdigest()
    pushed = await client.post("/v1/mutations/push", content=body,
                               headers={"Signature": signature})
    assert pushed.json()["matched"] == 1
    lines = [
        (now, f"TRSF E-BANKING CR {pay[0]}.00 ANDI", pay[0], "CR"),
        (now, "SETORAN TUNAI", 55_555, "CR"),
        (now, "BIAYA ADM", 10_000, "DB"),
        (now, f"TRSF CR {ids[1].upper()} BUDI", pay[1] - 1_000, "CR"),
        (now, f"TRSF CR {pay[2]} SITI", pay[2], "CR"),
        (now, f"TRSF CR {pay[2]} SITI LAGI", pay[2], "CR"),
        (now, f"TRSF CR {pay[5]} TELAT", pay[5], "CR"),
        (now, f"TRSF E-BANKING CR {pay[6]}.00 ANDI", pay[6], "CR"),
        (now - timedelta(days=3), f"TRSF CR {pay[7]} LAMA", pay[7], "CR"),
        (now, f"TRSF CR {pay[3]} DEWI", pay[3], "CR"),
        (now, f"TRSF CR {pay[4]} EKO", pay[4], "CR"),
    ]
    return ids, bca_statement(m.account_number, lines)


async def outcome(container: Container, ids: list[str], statement_id: str) -> dict[str, Any]:
    """Everything the import wrote, with ids replaced by positions so two runs compare."""
    pos = {order_id: n for n, order_id in enumerate(ids)}
    async with container.db.read() as conn:
        lines = (await conn.execute(sa.select(mutations).where(
            mutations.c.statement_id == statement_id).order_by(mutations.c.balance))).all()
        line_of = {m.id: n for n, m in enumerate(lines)}
        order_rows = (await conn.execute(sa.select(orders).where(orders.c.id.in_(ids)))).all()
        attempts = (await conn.execute(sa.select(payment_attempts).where(
            payment_attempts.c.order_id.in_(ids)))).all()
        proofs = (await conn.execute(sa.select(evidence).where(
            evidence.c.order_id.in_(ids)))).all()
        cases = (await conn.execute(sa.select(review_cases).where(
            review_cases.c.order_id.in_(ids)))).all()
        events = (await conn.execute(sa.select(outbox).where(
            outbox.c.aggregate_id.in_(ids)).order_by(outbox.c.id))).all()
        order_of = {a.id: a.order_id for a in attempts}
        cancels = (await conn.execute(sa.select(outbox).where(
            outbox.c.aggregate_id.in_(list(order_of))))).all()
    # Unique codes are random: amounts compare as their difference from what the order asked
    # (on its latest attempt: the one the statement pays).
    asked = {a.order_id: a.transfer_amount for a in sorted(attempts, key=lambda a: a.created_at)}
    stored = {o.id: o for o in order_rows}
    return {
        "lines": [(m.match_state, pos.get(m.order_id), m.matched_by) for m in lines],
        "orders": sorted((pos[o.id], o.state, o.review_reason, o.paid_at is not None)
                         for o in order_rows),
        "attempts": sorted((pos[a.order_id], a.rail, a.state, a.holds_code,
                            a.closed_at is not None, a.code_held_until is not None)
                           for a in attempts),
        "attempt_events": sorted((pos[order_of[e.aggregate_id]], e.event_type,
                                  sorted(e.payload))
                                 for e in cancels
                                 if e.payload.get("attempt_id") == e.aggregate_id),
        "evidence": sorted((pos[e.order_id], e.verdict, e.amount - asked[e.order_id], e.kind,
                            line_of.get(e.details["mutation_id"]), e.details["matched_by"])
                           for e in proofs),
        "cases": sorted((pos[c.order_id], c.reason, c.recommended_action,
                         c.amount - asked[c.order_id],
                         line_of.get(c.mutation_id)) for c in cases),
        # Per order, in the order they were written (the relay keeps that order per order;
        # across orders the batch writes its events before those of the line-by-line lines).
        "events": sorted(((pos[e.aggregate_id], e.event_type, sorted(e.payload),
                           e.payload.get("status"), e.payload.get("evidence"),
                           e.payload.get("paid_amount", asked[e.aggregate_id])
                           - asked[e.aggregate_id],
                           sorted(e.payload.get("display", {})),
                           _times_as_python_renders(e, stored[e.aggregate_id]))
                          for e in events),
                         key=lambda row: row[0]),
    }


def _times_as_python_renders(event: Any, order: Any) -> bool | None:
    """Whether an order event's times and display are, string for string, what ``iso``,
    ``wib`` and ``format_idr`` make of the stored order (paid_at: null until the event that
    announces the payment); None for an event about something else."""
    if not event.event_type.startswith("order."):
        return None
    p = event.payload
    paid_at = order.paid_at if p["status"] == "paid" else None
    return (p["expires_at"], p["paid_at"], p["display"]) == (
        iso(order.expires_at), iso(paid_at),
        {"amount": format_idr(order.amount), "expires_at": wib(order.expires_at),
         "paid_at": wib(paid_at) if paid_at is not None else None})


async def test_batch_import_writes_what_the_line_by_line_import_writes(
    client: httpx.AsyncClient, container: Container
) -> None:
    results = []
    for service in (container.reconciliation, line_by_line(container)):
        m = await new_merchant(container)
        ids, statement = await scenario(client, container, m)
        report = await service.import_statement(bank="bca", account_number=m.account_number,
                                                data=statement, filename="mutasi.csv",
                                                actor="test")
        assert report.statement_id is not None
        again = await service.import_statement(bank="bca", account_number=m.account_number,
                                               data=statement, filename="mutasi.csv",
                                               actor="test")
        assert (again.new, again.duplicate, again.matched) == (0, 11, 0)
        counts = {k: v for k, v in vars(report).items() if k != "statement_id"}
        results.append((counts, await outcome(container, ids, report.statement_id)))
    batch, reference = results
    assert batch == reference
    counts, written = batch
    assert counts == {"parsed": 11, "new": 11, "duplicate": 0, "matched": 7, "ambiguous": 1,
                      "unmatched": 2, "ignored_debits": 1, "needs_review": 4,
                      "skipped_pending": 0, "unreadable": 0, "possible_reversals": 0}
    assert [o[1] for o in written["orders"]] == [
        "paid", "needs_review", "paid", "paid", "paid", "needs_review", "paid", "awaiting_payment"]
    # Settling order 3 retired its abandoned QRIS (cancelled at the provider) and started the
    # quarantine of the failed transfer that still held its amount.
    assert [a for a in written["attempts"] if a[0] == 3] == [
        (3, "manual_transfer", "failed", True, True, True),
        (3, "manual_transfer", "paid", True, True, True),
        (3, "qris", "superseded", False, True, False)]
    assert written["attempt_events"] == [(3, "attempt.cancel_requested", ["attempt_id"])]
    # Every order event carries the order's times as the order API renders them.
    order_events = [e for e in written["events"] if e[1].startswith("order.")]
    assert {e[-1] for e in order_events} == {True}
    assert {tuple(e[-2]) for e in order_events} == {("amount", "expires_at", "paid_at")}
    paid = [e for e in order_events if e[1] == "order.paid"]
    assert len(paid) == 5 and all({"expires_at", "paid_at", "display"} <= set(e[2]) for e in paid)


async def test_an_order_paid_event_built_in_sql_is_byte_for_byte_the_python_one(
    client: httpx.AsyncClient, container: Container
) -> None:
    """The batch builds ``order.paid`` in PostgreSQL; the line-by-line path through
    ``event_payload``. At the same instants the merchant gets the same bytes from either,
    including the forms that differ most easily: a time on a whole second (``iso`` gives no
    fraction then), a fraction with trailing zeros, a WIB date on the next day with a one-digit
    day and hour, and thousands separators."""
    paid_at = datetime.now(UTC).replace(microsecond=0)  # a whole second
    deadlines = [datetime(2030, 1, 4, 17, 5, tzinfo=UTC),  # 05 Jan 2030 00:05 WIB
                 datetime(2030, 1, 4, 17, 5, 0, 120_000, tzinfo=UTC)]
    bodies = []
    for batch in (True, False):
        service = ReconciliationService(
            container.db, clock=FrozenClock(paid_at), metrics=container.metrics,
            quarantine=container.settings.unique_codes.quarantine, batch_statements=batch)
        m = await new_merchant(container)
        created = [await capture(client, m, 1_234_567) for _ in deadlines]
        async with container.db.transaction() as conn:
            for order, deadline in zip(created, deadlines, strict=True):
                await conn.execute(orders.update().where(orders.c.id == order["id"])
                                   .values(expires_at=deadline))
        statement = bca_statement(m.account_number, [
            (paid_at, f"TRSF CR {o['payment']['transfer_amount']} ANDI",
             o["payment"]["transfer_amount"], "CR") for o in created])
        report = await service.import_statement(bank="bca", account_number=m.account_number,
                                                data=statement, filename=None, actor="test")
        assert report.matched == 2
        async with container.db.read() as conn:
            events = (await conn.execute(sa.select(outbox).where(
                outbox.c.aggregate_id.in_([o["id"] for o in created]),
                outbox.c.event_type == "order.paid").order_by(outbox.c.id))).all()
            stored = {o.id: o for o in (await conn.execute(sa.select(orders).where(
                orders.c.id.in_([o["id"] for o in created])))).all()}
        ours = []
        for e in sorted(events, key=lambda e: [o["id"] for o in created].index(e.aggregate_id)):
            order = stored[e.aggregate_id]
            assert e.payload == event_payload(order, paid_amount=e.payload["paid_amount"],
                                              evidence="mutation")
            # Only what differs between the two merchants' orders is set aside.
            ours.append(webhook_body(OutboxEvent.from_row(e)).replace(
                e.event_id.encode(), b"EVT").replace(order.id.encode(), b"ORD").replace(
                order.merchant_order_id.encode(), b"MOI").replace(
                b'"paid_amount":%d' % e.payload["paid_amount"], b'"paid_amount":0'))
        bodies.append(ours)
    batch_bodies, reference = bodies
    assert batch_bodies == reference
    assert [json.loads(b)["data"]["expires_at"] for b in reference] == [
        "2030-01-04T17:05:00Z", "2030-01-04T17:05:00.120000Z"]
    assert json.loads(reference[0])["data"]["display"] == {
        "amount": "Rp1.234.567", "expires_at": "05 Jan 2030 00:05 WIB", "paid_at": wib(paid_at)}
    assert json.loads(reference[0])["data"]["paid_at"] == iso(paid_at)


@pytest.mark.parametrize("concurrent", [4])
async def test_concurrent_batch_imports_store_and_settle_once(
    client: httpx.AsyncClient, container: Container, concurrent: int
) -> None:
    import asyncio

    m = await new_merchant(container)
    created = [await capture(client, m, 70_000 + i) for i in range(20)]
    now = datetime.now(UTC)
    statement = bca_statement(m.account_number, [
        (now, f"TRSF CR {o['payment']['transfer_amount']} {uuid.uuid4().hex[:6]}",
         o["payment"]["transfer_amount"], "CR") for o in created])
    reports = await asyncio.gather(*[container.reconciliation.import_statement(
        bank="bca", account_number=m.account_number, data=statement, filename=None,
        actor="test") for _ in range(concurrent)])
    assert sum(r.new for r in reports) == 20 and sum(r.matched for r in reports) == 20
    async with container.db.read() as conn:
        settled = (await conn.execute(sa.select(evidence.c.order_id).where(
            evidence.c.order_id.in_([o["id"] for o in created])))).all()
    assert sorted(r.order_id for r in settled) == sorted(o["id"] for o in created)


async def _wait_for_a_lock_wait(container: Container) -> None:
    """Until some transaction of this database waits for a row lock (the import, blocked)."""
    import asyncio

    for _ in range(500):
        async with container.db.read() as conn:
            waiting = (await conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"))).scalar_one()
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the import never waited for the lock held by the test")


async def _import_while_locked(
    client: httpx.AsyncClient, container: Container, locked: str,
) -> tuple[ImportReport, list[str], list[Any]]:
    """Two orders paid by one statement; the import runs while the test holds the lock on the
    first order (``locked="order"``) or on its attempt (``"attempt"``), and changes that row
    under its lock once the import waits for it: pays the order through another source, or
    lets the attempt release its amount. Returns the report, the order ids and the evidence."""
    import asyncio

    from orchestrator.services.settlement import Payment, apply_payment

    m = await new_merchant(container)
    created = [await capture(client, m, 80_000 + 1_000 * i) for i in range(2)]
    ids, pays = [o["id"] for o in created], [o["payment"]["transfer_amount"] for o in created]
    async with container.db.read() as conn:
        attempt_id = (await conn.execute(sa.select(payment_attempts.c.id).where(
            payment_attempts.c.order_id == ids[0]))).scalar_one()
    now = datetime.now(UTC)
    statement = bca_statement(m.account_number, [
        (now, f"TRSF CR {pay} {uuid.uuid4().hex[:6]}", pay, "CR") for pay in pays])
    async with container.db.transaction() as other:
        if locked == "order":
            await other.execute(sa.select(orders.c.id).where(orders.c.id == ids[0])
                                .with_for_update())
        else:
            await other.execute(sa.select(payment_attempts.c.id).where(
                payment_attempts.c.id == attempt_id).with_for_update())
        task = asyncio.create_task(container.reconciliation.import_statement(
            bank="bca", account_number=m.account_number, data=statement, filename=None,
            actor="test"))
        await _wait_for_a_lock_wait(container)
        if locked == "order":
            await apply_payment(other, Payment(
                attempt_id=attempt_id, amount=pays[0], evidence_key=f"manual:{ids[0]}",
                kind="manual", observed_at=now, details={}), now=now,
                quarantine=timedelta(hours=1))
        else:
            await other.execute(payment_attempts.update().where(
                payment_attempts.c.id == attempt_id).values(
                state="expired", holds_code=False, code_held_until=None, closed_at=now))
    report = await task
    async with container.db.read() as conn:
        proofs = (await conn.execute(sa.select(evidence).where(
            evidence.c.order_id.in_(ids)))).all()
    return report, ids, list(proofs)


async def _order_states(container: Container, ids: list[str]) -> list[tuple[str, int]]:
    """Per order (in ``ids`` order): its state and its number of ``order.paid`` events."""
    async with container.db.read() as conn:
        states = dict((await conn.execute(sa.select(orders.c.id, orders.c.state).where(
            orders.c.id.in_(ids)))).all())
        paid = [r.aggregate_id for r in await conn.execute(sa.select(outbox.c.aggregate_id).where(
            outbox.c.aggregate_id.in_(ids), outbox.c.event_type == "order.paid"))]
    return [(states[i], paid.count(i)) for i in ids]


async def test_an_order_paid_elsewhere_before_the_batch_locks_it_gets_a_second_payment(
    client: httpx.AsyncClient, container: Container
) -> None:
    """The batch plans from rows it has not locked yet: an order another source pays before the
    import holds its lock is seen under the lock, and its line goes line by line."""
    report, ids, proofs = await _import_while_locked(client, container, "order")
    assert (report.matched, report.unmatched, report.needs_review) == (2, 0, 1)
    assert sorted((ids.index(e.order_id), e.kind, e.verdict) for e in proofs) == [
        (0, "manual", "settle"), (0, "mutation", "second_payment"), (1, "mutation", "settle")]
    assert await _order_states(container, ids) == [("paid", 1), ("paid", 1)]


async def test_an_attempt_that_releases_its_amount_before_the_batch_locks_it_is_not_paid(
    client: httpx.AsyncClient, container: Container
) -> None:
    """The attempt's row is locked by the batch's own UPDATE: a change made before it gets the
    lock (here the amount released) is checked again, and the line goes line by line."""
    report, ids, proofs = await _import_while_locked(client, container, "attempt")
    assert (report.matched, report.unmatched, report.needs_review) == (1, 1, 0)
    assert [(ids.index(e.order_id), e.verdict) for e in proofs] == [(1, "settle")]
    assert await _order_states(container, ids) == [("awaiting_payment", 0), ("paid", 1)]


def bri_statement(account: str, lines: list[tuple[datetime, int]]) -> bytes:
    """A BRImo export of credits (TGL_TRAN: WIB wall-clock time to the second)."""
    from orchestrator.domain.clock import WIB
    from orchestrator.reconciliation.statements.bri import COLUMNS

    out = [",".join(f'"{c}"' for c in COLUMNS)]
    balance = 1_000_000
    for n, (at, amount) in enumerate(lines, start=1):
        wib = at.astimezone(WIB)
        cells = [str(n), account, wib.strftime("%Y-%m-%d %H:%M:%S"), wib.strftime("%Y-%m-%d"),
                 wib.strftime("%H%M%S"), str(n), "NBMB ANDI TO TOKO UJI", f"{balance}.00", ".00",
                 f"{amount}.00", f"{balance + amount}.00", "Cr", "8888001", "1007", "",
                 "NBMB ANDI TO TOKO UJI", "", "", "Transfer Dari ANDI via BRImo"]
        balance += amount
        out.append(",".join(f'"{c}"' for c in cells))
    return ("\n".join(out) + "\n").encode()


async def test_a_bank_clock_a_few_minutes_slow_at_midnight_still_matches_in_the_batch(
    client: httpx.AsyncClient, container: Container
) -> None:
    """The batch's SQL holds its own copy of the window rule (matcher.window_opens): orders
    captured at 00:00:20 WIB, paid by transfers the bank dated 23:58 (its clock slow) and 23:50
    the day before. The first is the order's; the second is too early to be."""
    from orchestrator.domain.clock import WIB
    from tests.integration.test_reconciliation import upload
    from tests.support import new_ops_token

    m = await new_merchant(container, bank="bri")
    ops = {"Authorization": f"Bearer {await new_ops_token(container)}"}
    slow, early = await capture(client, m), await capture(client, m, 160_000)
    midnight = datetime.now(UTC).astimezone(WIB).replace(hour=0, minute=0, second=0,
                                                        microsecond=0)
    async with container.db.transaction() as conn:
        await conn.execute(payment_attempts.update().where(
            payment_attempts.c.order_id.in_([slow["id"], early["id"]])).values(
            created_at=midnight + timedelta(seconds=20)))
    statement = bri_statement(m.account_number, [
        (midnight - timedelta(minutes=2), slow["payment"]["transfer_amount"]),
        (midnight - timedelta(minutes=10), early["payment"]["transfer_amount"])])
    r = await upload(client, ops, m, statement, bank="bri")
    assert r.status_code == 201, r.text
    assert (r.json()["matched"], r.json()["unmatched"]) == (1, 1)
    async with container.db.read() as conn:
        states = dict((await conn.execute(sa.select(orders.c.id, orders.c.state).where(
            orders.c.id.in_([slow["id"], early["id"]])))).all())
    assert states == {slow["id"]: "paid", early["id"]: "awaiting_payment"}


async def test_a_reference_against_another_orders_exact_amount_settles_neither_on_either_path(
    client: httpx.AsyncClient, container: Container
) -> None:
    """Order A holds 81,xxx, order B 92,xxx; a credit of A's amount to the rupiah names B. The
    batch sends a referencing line to the line-by-line path; both paths leave it to a person."""
    for service in (container.reconciliation, line_by_line(container)):
        m = await new_merchant(container)
        a, b = await capture(client, m, 81_000), await capture(client, m, 92_000)
        statement = bca_statement(m.account_number, [
            (datetime.now(UTC), f"TRSF CR {b['id'].upper()} ANDI",
             a["payment"]["transfer_amount"], "CR")])
        report = await service.import_statement(bank="bca", account_number=m.account_number,
                                                data=statement, filename="mutasi.csv",
                                                actor="test")
        assert (report.matched, report.ambiguous, report.needs_review) == (0, 1, 0)
        assert await _order_states(container, [a["id"], b["id"]]) == [
            ("awaiting_payment", 0), ("awaiting_payment", 0)]
        async with container.db.read() as conn:
            states = (await conn.execute(sa.select(mutations.c.match_state).where(
                mutations.c.statement_id == report.statement_id))).scalars().all()
        assert states == ["ambiguous"]



async def test_an_exact_credit_pays_an_order_in_review_over_a_wrong_amount_on_either_path(
    client: httpx.AsyncClient, container: Container
) -> None:
    """A first statement paid the order 1,000 over by reference (review, amount mismatch); a
    second brings the exact transfer. The batch's SQL does not know why an order is in review,
    so such a line goes one by one: both paths pay the order by it and leave the overpayment
    a case recommended for refund."""
    results = []
    for service in (container.reconciliation, line_by_line(container)):
        m = await new_merchant(container)
        order = await capture(client, m)
        pay = order["payment"]["transfer_amount"]
        for line in ((datetime.now(UTC), f"TRSF CR {order['id'].upper()} ANDI", pay + 1_000,
                      "CR"),
                     (datetime.now(UTC), f"TRSF CR {pay} ANDI LAGI", pay, "CR")):
            report = await service.import_statement(
                bank="bca", account_number=m.account_number,
                data=bca_statement(m.account_number, [line]), filename="mutasi.csv",
                actor="test")
        assert (report.matched, report.needs_review) == (1, 0)
        assert report.statement_id is not None
        results.append(await outcome(container, [order["id"]], report.statement_id))
    batch, reference = results
    assert batch == reference
    assert batch["orders"] == [(0, "paid", "amount_mismatch", True)]
    assert batch["cases"] == [(0, "amount_mismatch", "refund", 1_000, None)]
    assert [e[1] for e in batch["events"]][-2:] == ["order.paid", "review_case.updated"]

# -- found in review (rev-recon) -----------------------------------------------------------

@pytest.mark.parametrize("batch", [True, False], ids=["batch", "line-by-line"])
async def test_a_transfer_timed_hours_before_an_attempt_existed_does_not_pay_it(
    client: httpx.AsyncClient, container: Container, batch: bool
) -> None:
    """A unique amount is reused once its quarantine ends (an hour by default): order A's code
    was released in the morning, order B was given the same amount at 14:00 WIB. A's customer,
    paying late, sent it at 10:00 WIB, and the BRI export stamps the line to the second. That
    money moved four hours before B's instructions existed: it cannot be B's customer's. Only a
    line dated by day alone may be paid from the start of the attempt's WIB day; a timed line
    no earlier than the attempt, give or take the bank's clock."""
    from orchestrator.domain.clock import WIB
    from tests.integration.test_reconciliation import upload
    from tests.support import new_ops_token

    m = await new_merchant(container, bank="bri")
    b = await capture(client, m)
    day = datetime.now(UTC).astimezone(WIB).replace(hour=0, minute=0, second=0, microsecond=0)
    async with container.db.transaction() as conn:
        await conn.execute(payment_attempts.update().where(
            payment_attempts.c.order_id == b["id"]).values(
            created_at=day + timedelta(hours=14)))
    statement = bri_statement(m.account_number, [
        (day + timedelta(hours=10), b["payment"]["transfer_amount"])])
    if batch:
        ops = {"Authorization": f"Bearer {await new_ops_token(container)}"}
        r = await upload(client, ops, m, statement, bank="bri")
        assert r.status_code == 201, r.text
        counts = (r.json()["matched"], r.json()["unmatched"])
    else:
        report = await line_by_line(container).import_statement(
            bank="bri", account_number=m.account_number, data=statement, filename=None,
            actor="test")
        counts = (report.matched, report.unmatched)
    assert counts == (0, 1)
    assert await _order_states(container, [b["id"]]) == [("awaiting_payment", 0)]
