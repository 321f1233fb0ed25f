"""Unique codes: a closed attempt keeps its transfer amount through the quarantine, then the
amount returns to the pool for new orders."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, time, timedelta

import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container, build
from orchestrator.domain.checkout import Customer, OrderRequest
from orchestrator.domain.clock import WIB
from orchestrator.domain.errors import UniqueCodesExhausted
from orchestrator.domain.money import UniqueCodeRange
from orchestrator.services.capture import CaptureOutcome
from orchestrator.services.expiry import expire_due_orders, release_quarantined_codes
from orchestrator.services.orders import cancel_order
from orchestrator.settings import UniqueCodeSettings
from orchestrator.store.tables import orders, payment_attempts
from tests.support import ShiftedClock, bca_statement, new_merchant

NEXT_DAY = timedelta(days=1, minutes=10)
"""Past the end of the WIB day a quarantine ends in, whatever its hour: amounts go back to the
pool only then (``expiry.release_cutoff``)."""


def request(merchant_order_id: str, amount: int = 64_000) -> OrderRequest:
    return OrderRequest(merchant_order_id=merchant_order_id, amount=amount,
                        customer=Customer(name="Sari", email="sari@example.id",
                                          phone="081298765432"))


async def test_a_closed_attempts_amount_returns_after_quarantine(container: Container) -> None:
    quarantine = timedelta(minutes=30)
    two_codes = build(replace(container.settings, unique_codes=UniqueCodeSettings(
        codes=UniqueCodeRange(low=1, high=2), quarantine=quarantine)))
    try:
        m = await new_merchant(two_codes)
        first = await two_codes.capture.capture(merchant_id=m.merchant_id, idempotency_key="a",
                                                request=request("Q-1"))
        await two_codes.capture.capture(merchant_id=m.merchant_id, idempotency_key="b",
                                        request=request("Q-2"))
        with pytest.raises(UniqueCodesExhausted):
            await two_codes.capture.capture(merchant_id=m.merchant_id, idempotency_key="c",
                                            request=request("Q-3"))
        now = two_codes.clock.now()
        await cancel_order(two_codes.db, merchant_id=m.merchant_id, order_id=first.body["id"],
                           now=now, quarantine=quarantine)
        # Cancelled, but the amount is still held: a late transfer of it must not pay Q-3.
        await release_quarantined_codes(two_codes.db, now=now + quarantine / 2)
        with pytest.raises(UniqueCodesExhausted):
            await two_codes.capture.capture(merchant_id=m.merchant_id, idempotency_key="c",
                                            request=request("Q-3"))
        await release_quarantined_codes(two_codes.db, now=now + quarantine + NEXT_DAY)
        third = await two_codes.capture.capture(merchant_id=m.merchant_id, idempotency_key="c",
                                                request=request("Q-3"))
        assert third.body["payment"]["transfer_amount"] == first.body["payment"][
            "transfer_amount"]
    finally:
        await two_codes.close()


async def test_expiry_holds_the_amount_until_quarantine_ends(container: Container) -> None:
    quarantine = timedelta(minutes=10)
    one_code = build(replace(container.settings, unique_codes=UniqueCodeSettings(
        codes=UniqueCodeRange(low=7, high=7), quarantine=quarantine)))
    try:
        m = await new_merchant(one_code)
        short = replace(request("E-1"), expires_in=300)
        await one_code.capture.capture(merchant_id=m.merchant_id, idempotency_key="e1",
                                       request=short)
        deadline = one_code.clock.now() + timedelta(seconds=301)
        while await expire_due_orders(one_code.db, now=deadline, quarantine=quarantine,
                                      batch=500):
            pass
        await release_quarantined_codes(one_code.db, now=deadline)
        with pytest.raises(UniqueCodesExhausted):
            await one_code.capture.capture(merchant_id=m.merchant_id, idempotency_key="e2",
                                           request=request("E-2"))
        await release_quarantined_codes(one_code.db, now=deadline + quarantine + NEXT_DAY)
        again = await one_code.capture.capture(merchant_id=m.merchant_id, idempotency_key="e2",
                                               request=request("E-2"))
        assert again.body["payment"]["transfer_amount"] == 64_007
    finally:
        await one_code.close()


async def test_the_release_passes_by_an_amount_being_paid_and_frees_it_next_sweep(
    container: Container,
) -> None:
    """A late payment being applied holds the attempt's row: the release must not wait on it
    (waiting, while holding other attempts of that order, it deadlocked with the payment and
    ended a statement import whole)."""
    quarantine = timedelta(minutes=10)
    m = await new_merchant(container)
    placed = await container.capture.capture(merchant_id=m.merchant_id, idempotency_key="r1",
                                             request=request(f"R-{m.merchant_id[-8:]}"))
    now = container.clock.now()
    await cancel_order(container.db, merchant_id=m.merchant_id, order_id=placed.body["id"],
                       now=now, quarantine=quarantine)
    a = payment_attempts.c
    mine = a.order_id == placed.body["id"]
    async with container.db.transaction() as paying:  # a late transfer being applied to it
        await paying.execute(sa.select(a.id).where(mine).with_for_update())
        await asyncio.wait_for(release_quarantined_codes(
            container.db, now=now + quarantine + NEXT_DAY), 5)
        async with container.db.read() as conn:
            held = (await conn.execute(sa.select(a.holds_code).where(mine))).scalar_one()
        assert held  # passed by, not waited on
    await release_quarantined_codes(container.db, now=now + quarantine + NEXT_DAY)
    async with container.db.read() as conn:
        assert not (await conn.execute(sa.select(a.holds_code).where(mine))).scalar_one()


async def test_an_amount_released_on_the_day_it_was_held_cannot_take_a_day_dated_payment(
    container: Container,
) -> None:
    """A KlikBCA statement dates each line by day only (00:00 WIB), and such a line may pay any
    attempt of its day. A customer who paid order A just before its deadline is seen when the
    day's statement is imported; if A's amount had gone back to the pool that day, a stranger's
    order B given the same amount would be settled with A's customer's money while A stayed
    expired. The amount stays held until the WIB day its quarantine ends is over."""
    quarantine = timedelta(minutes=10)
    clock = ShiftedClock()
    today_10_wib = datetime.combine(clock.now().astimezone(WIB).date(), time(10), tzinfo=WIB)
    clock.advance(today_10_wib - clock.now())
    one_code = build(replace(container.settings, unique_codes=UniqueCodeSettings(
        codes=UniqueCodeRange(low=7, high=7), quarantine=quarantine)), clock=clock)
    try:
        m = await new_merchant(one_code)
        a = await one_code.capture.capture(merchant_id=m.merchant_id, idempotency_key="d1",
                                           request=replace(request("D-1"), expires_in=300))
        paid_on_time = clock.now() + timedelta(minutes=4)
        clock.advance(timedelta(seconds=301))
        while await expire_due_orders(one_code.db, now=clock.now(), quarantine=quarantine,
                                      batch=500):
            pass
        clock.advance(quarantine + timedelta(minutes=1))
        await release_quarantined_codes(one_code.db, now=clock.now())
        try:
            b: CaptureOutcome | None = await one_code.capture.capture(
                merchant_id=m.merchant_id, idempotency_key="d2", request=request("D-2"))
        except UniqueCodesExhausted:
            b = None
        await one_code.reconciliation.import_statement(
            bank="bca", account_number=m.account_number, filename="mutasi.csv", actor="test",
            data=bca_statement(m.account_number, [
                (paid_on_time, "TRSF E-BANKING CR 64007.00 SITI", 64_007, "CR")]))
        async with one_code.db.read() as conn:
            state = {r.merchant_order_id: r.state for r in await conn.execute(
                sa.select(orders.c.merchant_order_id, orders.c.state)
                .where(orders.c.merchant_id == m.merchant_id))}
        assert state["D-1"] == "needs_review", state  # A's late payment reached A, for a person
        assert b is None or state["D-2"] == "awaiting_payment"
        # The next WIB day the amount is free again.
        clock.advance(today_10_wib + timedelta(days=1) - clock.now())
        await release_quarantined_codes(one_code.db, now=clock.now())
        again = await one_code.capture.capture(merchant_id=m.merchant_id, idempotency_key="d3",
                                               request=request("D-3"))
        assert again.body["payment"]["transfer_amount"] == 64_007
        assert a.body["payment"]["transfer_amount"] == 64_007
    finally:
        await one_code.close()
