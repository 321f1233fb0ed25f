"""Unique codes: a closed attempt keeps its transfer amount through the quarantine, then the
amount returns to the pool for new orders."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container, build
from orchestrator.domain.checkout import Customer, OrderRequest
from orchestrator.domain.errors import UniqueCodesExhausted
from orchestrator.domain.money import UniqueCodeRange
from orchestrator.services.expiry import expire_due_orders, release_quarantined_codes
from orchestrator.services.orders import cancel_order
from orchestrator.settings import UniqueCodeSettings
from orchestrator.store.tables import payment_attempts
from tests.support import new_merchant


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
        await release_quarantined_codes(two_codes.db, now=now + quarantine)
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
        await release_quarantined_codes(one_code.db, now=deadline + quarantine)
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
        await asyncio.wait_for(release_quarantined_codes(container.db, now=now + quarantine), 5)
        async with container.db.read() as conn:
            held = (await conn.execute(sa.select(a.holds_code).where(mine))).scalar_one()
        assert held  # passed by, not waited on
    await release_quarantined_codes(container.db, now=now + quarantine)
    async with container.db.read() as conn:
        assert not (await conn.execute(sa.select(a.holds_code).where(mine))).scalar_one()
