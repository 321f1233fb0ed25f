"""Items a mutation feed listed or pushed that Lunas could not read: kept once, shown to people,
closed.

The feed is re-read day by day, so the same bad item comes back every poll; it is kept once (its
``item_key`` is a hash of the item) and counted once. It stays ``open`` until either the feed
lists a readable version of the same mutation (``read``: the feed's own correction, matched as
usual) or a person closes it with a note (``handled``, audited) after dealing with the money it
may stand for. Open items are what the ``LunasMutationFeedItemUnreadable`` alert counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.errors import Conflict, InvalidRequest, NotFound
from orchestrator.domain.ids import new_id
from orchestrator.reconciliation.fingerprint import fingerprint_moota
from orchestrator.reconciliation.moota import UnreadableItem
from orchestrator.services.audit import record_audit
from orchestrator.services.order_view import iso
from orchestrator.store import keyset
from orchestrator.store.database import Database, upsert_insert
from orchestrator.store.tables import mutations, unreadable_feed_items

log = logging.getLogger("lunas.feed")

MOOTA = "moota"
"""The one feed there is: Moota's, polled (``GET /mutation``) and pushed alike."""
OPEN, READ, HANDLED = "open", "read", "handled"
STATES = (OPEN, READ, HANDLED)
MAX_NOTE = 2000
"""The length ``unreadable_feed_items.note`` (and the audit log's reason) keeps."""
MAX_RAW = 64 * 1024
"""Characters of the item kept; a real mutation object is well under 2 KiB."""


_ALREADY_STORED = "a readable version of this mutation was stored before"


async def _stored_mutations(conn: AsyncConnection, refs: list[str]) -> set[str]:
    """Which of these Moota mutation ids are in the mutation store already."""
    if not refs:
        return set()
    by_print = {fingerprint_moota(ref): ref for ref in refs}
    found = (await conn.execute(sa.select(mutations.c.fingerprint).where(
        mutations.c.fingerprint.in_(sorted(by_print))))).scalars()
    return {by_print[f] for f in found}


class ItemClosed(Conflict):
    code = "unreadable_item_closed"


def render_item(row: Any) -> dict[str, Any]:
    return {"id": row.id, "feed": row.feed, "mutation_ref": row.mutation_ref,
            "problem": row.problem, "raw_item": row.raw_item, "state": row.state,
            "first_seen_at": iso(row.first_seen_at), "closed_at": iso(row.closed_at),
            "closed_by": row.closed_by, "note": row.note}


class UnreadableFeedItems:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def unseen(self, feed: str, items: Sequence[UnreadableItem]
                     ) -> list[UnreadableItem]:
        """The items not kept before, by their text or by their mutation id: the feed lists the
        ones kept already on every poll, and only new ones say something new."""
        if not items:
            return []
        t = unreadable_feed_items.c
        keys = sorted({i.key for i in items})
        refs = sorted({i.mutation_ref for i in items if i.mutation_ref is not None})
        async with self._db.read() as conn:
            known = set((await conn.execute(sa.select(t.item_key).where(
                t.item_key.in_(keys)))).scalars())
            known_refs: set[str | None] = set()
            if refs:
                known_refs = set((await conn.execute(sa.select(t.mutation_ref).where(
                    t.feed == feed, t.mutation_ref.in_(refs)))).scalars())
        return list({i.key: i for i in items if i.key not in known
                     and (i.mutation_ref is None or i.mutation_ref not in known_refs)}.values())

    async def keep(self, feed: str, items: Sequence[UnreadableItem], *, now: datetime
                   ) -> list[UnreadableItem]:
        """Store the items not kept before; returns those that are new.

        One item per text and one per mutation id: Moota's items carry fields that change
        (``updated_at``, ``note``) and the push and the feed shape an item differently, so one
        mutation can arrive as several texts; it is still one thing for a person to deal with.
        An item whose mutation is stored already (a readable version came first) is kept as
        ``read``. Inserted in one order (by id, then text) so that two keepers of overlapping
        items, a push and a poll, wait for each other instead of deadlocking."""
        if not items:
            return []
        fresh: list[UnreadableItem] = []
        t = unreadable_feed_items
        ordered = sorted({i.key: i for i in items}.values(),
                         key=lambda i: (i.mutation_ref or "", i.key))
        async with self._db.transaction() as conn:
            insert = upsert_insert(conn.dialect.name)
            stored = await _stored_mutations(conn, [i.mutation_ref for i in ordered
                                                    if i.mutation_ref is not None])
            for item in ordered:
                read = item.mutation_ref in stored
                kept = await conn.execute(
                    insert(t).values(
                        id=new_id("ufi"), feed=feed, item_key=item.key,
                        mutation_ref=item.mutation_ref, raw_item=item.raw[:MAX_RAW],
                        problem=item.problem[:500], first_seen_at=now,
                        state=READ if read else OPEN, closed_at=now if read else None,
                        closed_by="feed" if read else None,
                        note=_ALREADY_STORED if read else None,
                    ).on_conflict_do_nothing().returning(t.c.id))
                if kept.first() is not None and not read:
                    fresh.append(item)
        for item in fresh:
            log.warning("the %s feed sent an item Lunas cannot read (%s); set aside for a "
                        "person: GET /v1/reconciliation/unreadable", feed, item.problem)
        return fresh

    async def close_read(self, feed: str, *, now: datetime) -> int:
        """Close the open items whose mutation is now in the mutation store: the feed or a push
        brought a readable version of it. Asked of the store, not of what one call just read,
        so an item a crash left open between the two is closed by the next poll or push."""
        t = unreadable_feed_items.c
        async with self._db.transaction() as conn:
            waiting = [ref for ref in (await conn.execute(sa.select(t.mutation_ref).where(
                t.feed == feed, t.state == OPEN, t.mutation_ref.is_not(None)))).scalars()
                if ref is not None]
            read = sorted(await _stored_mutations(conn, waiting))
            if not read:
                return 0
            result = await conn.execute(
                unreadable_feed_items.update()
                .where(t.feed == feed, t.state == OPEN, t.mutation_ref.in_(read))
                .values(state=READ, closed_at=now, closed_by="feed",
                        note="the feed listed a readable version of this mutation"))
        return int(result.rowcount or 0)

    async def listing(self, *, state: str | None, limit: int, after: str | None = None
                      ) -> list[dict[str, Any]]:
        """Oldest first; ``after`` (an item id) continues after the page that ended there."""
        if state is not None and state not in STATES:
            raise InvalidRequest(f"state must be one of: {', '.join(STATES)}", field="state")
        t = unreadable_feed_items.c
        query = sa.select(unreadable_feed_items).order_by(t.first_seen_at, t.id).limit(limit)
        if state is not None:
            query = query.where(t.state == state)
        async with self._db.read() as conn:
            if after:
                query = query.where(await keyset.after(conn, t.first_seen_at, t.id, after,
                                                       "unreadable item"))
            return [render_item(row) for row in await conn.execute(query)]

    async def handled(self, item_id: str, *, actor: str, note: str, now: datetime
                      ) -> dict[str, Any]:
        """A person dealt with the money the item may stand for (a statement line uploaded, a
        manual match, the bank asked): close it, audited."""
        note = note.strip()
        if not note:
            raise InvalidRequest("say what was done in 'note'; it goes to the audit log",
                                 field="note")
        if len(note) > MAX_NOTE:
            raise InvalidRequest(f"'note' is kept to {MAX_NOTE} characters", field="note")
        t = unreadable_feed_items
        async with self._db.transaction() as conn:
            row = (await conn.execute(sa.select(t).where(t.c.id == item_id).with_for_update())
                   ).first()
            if row is None:
                raise NotFound(f"no unreadable feed item {item_id}")
            if row.state != OPEN:
                raise ItemClosed(f"item {item_id} is already {row.state} (by {row.closed_by})")
            await conn.execute(t.update().where(t.c.id == item_id).values(
                state=HANDLED, closed_at=now, closed_by=actor, note=note))
            await record_audit(conn, actor=actor, action="unreadable_feed_item.handled",
                               subject_type="unreadable_feed_item", subject_id=item_id,
                               reason=note, details={"feed": row.feed,
                                                     "mutation_ref": row.mutation_ref},
                               now=now)
            closed = (await conn.execute(sa.select(t).where(t.c.id == item_id))).one()
        return render_item(closed)
