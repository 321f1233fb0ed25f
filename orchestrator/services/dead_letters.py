"""Dead letters: outbox events that used up their retries, for a person to send again or let go.

An event is dead-lettered after about a day of failed tries (``outbox/retry.py``) or at once when
retrying cannot help: a merchant endpoint that never answered 2xx, a job that always fails. Once
the cause is fixed a person re-delivers it (all of one merchant's at once, after an endpoint
outage) or, when it must never be sent, discards it. Both are audited with who and why; a
re-delivered event starts a fresh retry schedule, and every consumer deduplicates by event id,
so sending one again is safe. A discarded event is kept (``discarded``), never deleted: it is
the record that a merchant was not told.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator.domain.errors import Conflict, InvalidRequest, NotFound
from orchestrator.outbox import queries
from orchestrator.services.audit import record_audit
from orchestrator.services.order_view import iso
from orchestrator.store.database import Database
from orchestrator.store.tables import merchants, outbox

DISCARDED = "discarded"
MAX_BATCH = 10_000
"""Events re-delivered by one request: a merchant's day of events after an endpoint outage."""


class NotDead(Conflict):
    code = "not_dead_lettered"


def _why(reason: str) -> str:
    if not reason.strip():
        raise InvalidRequest("say why in 'reason'; it goes to the audit log", field="reason")
    return reason.strip()


def render(e: Any) -> dict[str, Any]:
    return {"event_id": e.event_id, "event_type": e.event_type, "aggregate_id": e.aggregate_id,
            "merchant_id": e.merchant_id, "status": e.status, "attempts": e.attempts,
            "created_at": iso(e.created_at), "processed_at": iso(e.processed_at),
            "last_error": e.last_error}


async def list_dead(db: Database, *, limit: int, merchant_id: str | None = None,
                    after: str | None = None) -> list[dict[str, Any]]:
    """Dead events, oldest first; ``after`` an event id, to continue after it (``keyset``)."""
    o = outbox.c
    query = sa.select(outbox).where(o.status == queries.DEAD).order_by(o.id).limit(limit)
    if merchant_id:
        query = query.where(o.merchant_id == merchant_id)
    async with db.read() as conn:
        if after:
            mark = (await conn.execute(sa.select(o.id).where(o.event_id == after))).scalar()
            if mark is None:
                raise NotFound(f"no event {after} to continue after")
            query = query.where(o.id > mark)
        return [render(e) for e in await conn.execute(query)]


async def redeliver(db: Database, *, event_ids: list[str], merchant_id: str | None, actor: str,
                    reason: str, now: datetime) -> list[str]:
    """Send dead events again: the ones named, or every dead event of ``merchant_id``. Returns
    the event ids now pending; one named that is not dead (any more) is refused, naming it."""
    reason = _why(reason)
    if not event_ids and not merchant_id:
        raise InvalidRequest("name the events to send again ('event_ids') or a merchant "
                             "('merchant_id')", field="event_ids")
    if event_ids and merchant_id:
        raise InvalidRequest("name the events ('event_ids') or a merchant ('merchant_id'), "
                             "not both", field="event_ids")
    if len(event_ids) > MAX_BATCH:
        raise InvalidRequest(f"at most {MAX_BATCH} events per request", field="event_ids")
    o = outbox.c
    chosen = o.event_id.in_(event_ids) if event_ids else o.merchant_id == merchant_id
    async with db.transaction() as conn:
        if merchant_id and (await conn.execute(sa.select(merchants.c.id).where(
                merchants.c.id == merchant_id))).first() is None:
            # A mistyped id would otherwise be "0 redelivered", as if that merchant had none.
            raise NotFound(f"no merchant {merchant_id}")
        dead = (await conn.execute(
            sa.select(o.id, o.event_id).where(chosen, o.status == queries.DEAD)
            .order_by(o.id).limit(MAX_BATCH).with_for_update())).all()
        missing = sorted(set(event_ids) - {d.event_id for d in dead})
        if missing:
            raise NotDead(f"not dead-lettered (unknown, re-delivered or discarded already): "
                          f"{', '.join(missing[:10])}")
        if not dead:
            return []
        await conn.execute(outbox.update().where(o.id.in_([d.id for d in dead])).values(
            status=queries.PENDING, attempts=0, available_at=now, lease_owner=None,
            lease_expires_at=None, processed_at=None))
        sent = [d.event_id for d in dead]
        await record_audit(conn, actor=actor, action="outbox.redeliver",
                           subject_type="merchant" if merchant_id else "outbox_event",
                           subject_id=merchant_id or sent[0], reason=reason,
                           details={"events": len(sent), "event_ids": sent[:100]}, now=now)
    return sent


async def discard(db: Database, *, event_id: str, actor: str, reason: str,
                  now: datetime) -> dict[str, Any]:
    """Let a dead event go for good: it is kept as ``discarded``, with who and why."""
    reason = _why(reason)
    o = outbox.c
    async with db.transaction() as conn:
        row = (await conn.execute(sa.select(outbox).where(o.event_id == event_id)
                                  .with_for_update())).first()
        if row is None:
            raise NotFound(f"no outbox event {event_id}")
        if row.status != queries.DEAD:
            raise NotDead(f"event {event_id} is {row.status}, not dead-lettered")
        note = f"discarded by {actor}: {reason}"[:queries.LAST_ERROR_MAX]
        await conn.execute(outbox.update().where(o.id == row.id).values(
            status=DISCARDED, processed_at=now, last_error=note))
        await record_audit(conn, actor=actor, action="outbox.discard",
                           subject_type="outbox_event", subject_id=event_id, reason=reason,
                           details={"event_type": row.event_type,
                                    "merchant_id": row.merchant_id,
                                    "last_error": row.last_error}, now=now)
        done = (await conn.execute(sa.select(outbox).where(o.id == row.id))).one()
    return render(done)
