"""Unreadable feed items are kept once per mutation, whatever text it arrives in, and two keepers
of the same items (a push and a poll) never deadlock. Real PostgreSQL, the session database."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.reconciliation.fingerprint import fingerprint_moota
from orchestrator.reconciliation.moota import unreadable_item
from orchestrator.services.unreadable_feed_items import MOOTA
from orchestrator.store.tables import mutations, unreadable_feed_items


def odd(ref: str, **extra: Any) -> Any:
    return unreadable_item({"mutation_id": ref, "amount": "1.500,00 IDR", **extra},
                           "amount is not an amount")


async def states(c: Container, refs: list[str]) -> list[tuple[str, str]]:
    t = unreadable_feed_items.c
    async with c.db.read() as conn:
        rows = await conn.execute(sa.select(t.mutation_ref, t.state).where(
            t.mutation_ref.in_(refs)).order_by(t.mutation_ref))
        return [(r.mutation_ref, r.state) for r in rows]


async def test_one_mutation_is_one_item_whatever_text_it_comes_in(container: Container) -> None:
    """Moota edits an item (``updated_at``, ``note``) and the push shapes it differently from the
    feed: still one mutation, one item, never reopened once a person closed it."""
    items = container.unreadable_feed_items
    ref = f"mt{uuid.uuid4().hex[:9]}"
    now = container.clock.now()
    assert len(await items.keep(MOOTA, [odd(ref)], now=now)) == 1
    edited = odd(ref, note="edited", updated_at="2026-11-29 10:00:00")
    assert await items.unseen(MOOTA, [edited]) == []
    assert await items.keep(MOOTA, [edited, odd(ref, taggings=[])], now=now) == []
    [listed] = [i for i in await items.listing(state="open", limit=1000)
                if i["mutation_ref"] == ref]
    await items.handled(listed["id"], actor="ops:sari", note="paid by hand", now=now)
    assert await items.keep(MOOTA, [odd(ref, note="again")], now=now) == []
    assert await states(container, [ref]) == [(ref, "handled")]


async def test_an_item_whose_mutation_is_stored_already_is_kept_as_read(
    container: Container,
) -> None:
    """The push brought the readable version first; the feed lists an unreadable one later."""
    ref = f"mt{uuid.uuid4().hex[:9]}"
    now = container.clock.now()
    async with container.db.transaction() as conn:
        await conn.execute(mutations.insert().values(
            id=f"mut_{uuid.uuid4().hex[:20]}", bank="bca", account_number="0123456789",
            posted_at=now, amount=150_123, direction="CR", description="TRSF", source="push",
            fingerprint=fingerprint_moota(ref), match_state="unmatched", created_at=now))
    assert await container.unreadable_feed_items.keep(MOOTA, [odd(ref)], now=now) == []
    assert await states(container, [ref]) == [(ref, "read")]


async def test_two_keepers_of_the_same_items_in_opposite_orders_both_finish(
    container: Container,
) -> None:
    """Each row is its own INSERT: taken in arrival order, a push and a poll holding each
    other's next key deadlocked (20 rounds out of 20 in review)."""
    items = container.unreadable_feed_items
    for _ in range(10):
        batch = [odd(f"mt{uuid.uuid4().hex[:9]}") for _ in range(50)]
        now = container.clock.now()
        first, second = await asyncio.gather(items.keep(MOOTA, batch, now=now),
                                             items.keep(MOOTA, batch[::-1], now=now))
        assert len(first) + len(second) == 50
        assert len(await states(container, [i.mutation_ref for i in batch])) == 50
