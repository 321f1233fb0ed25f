"""Adds events to the outbox inside the caller's transaction. It never commits: the unit of work
does, so a state change and the events it causes land together or not at all (rule 5).

An order's merchant webhooks go out one at a time, in outbox order (``queries.held_back``): a new
one waits for the order's earlier ones. After an endpoint outage the earliest may be waiting for
a retry hours away, and the new one (an ``order.paid``, say) would wait that long too. So writing
a merchant webhook brings the next try of its order's earlier ones that are waiting for a retry
forward to now: the new event is news the merchant is waiting for, and an endpoint that answers
again is found at once. Each new event brings them forward once (a dead endpoint is tried once
more per event written, not hammered); the try counts as any other (``attempts``), and its
failure gets the next backoff of the retry policy as usual. An event dropped as a repeat of a
fixed event id (``PendingEvent.event_id``: ``order.payment_pending``, written again each time a
flapping breaker defers its order's read anew) is no news and brings nothing forward: before, each
repeat did, and a failing endpoint was tried once a breaker round, the event dead-lettered within
minutes instead of about a day. (The bulk statement import writes
its ``order.paid`` in SQL of its own, ``reconciliation._INSERT_ORDER_EVENTS``, without this.)
On PostgreSQL that UPDATE runs in the INSERT's own statement (``_INSERT_TRYING``): it finds
nothing nearly every time, and as a statement of its own it cost settlement, expiry and the
recovery drain a round trip per webhook (bench/outbox.py, bench/PROFILE.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from opentelemetry.trace import SpanKind
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.events import MERCHANT_VISIBLE
from orchestrator.domain.ids import new_id
from orchestrator.outbox.queries import PENDING_INLINE, unindexed
from orchestrator.store.database import upsert_insert
from orchestrator.store.tables import outbox
from orchestrator.telemetry import tracing

_INSERT = outbox.insert()
"""One statement object for every call: its compiled form and cache key are kept on it."""
_INSERT_ONCE = {dialect: upsert_insert(dialect)(outbox).on_conflict_do_nothing(
    index_elements=["event_id"]) for dialect in ("postgresql", "sqlite")}
"""For events that carry their own ``event_id``: a second one with that id is dropped."""


_WEBHOOKS = sorted(MERCHANT_VISIBLE)


def _waiting(webhook: sa.ColumnElement[bool]) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        outbox.c.status == PENDING_INLINE,  # in the text: a generic plan can use the index
        webhook,
        outbox.c.merchant_id.is_not(None),
        # Tried and failed, now waiting for its retry: never one written to start later (nor
        # one this very call wrote: ``attempts`` 0). Or being tried right now: marked, so that
        # if this try fails its retry is now too (``queries.mark_retry``'s ``due_when_claimed``),
        # not a backoff with the news behind it.
        outbox.c.attempts > 0,
        sa.or_(sa.and_(unindexed(outbox.c.available_at) > sa.bindparam("w_now"),  # the order's
                       outbox.c.lease_owner.is_(None)),                           # index only
               sa.and_(outbox.c.lease_owner.is_not(None),
                       unindexed(outbox.c.available_at) < sa.bindparam("w_now"))),
    )


_TRY_AGAIN_NOW = (
    sa.update(outbox)
    .where(outbox.c.aggregate_id.in_(sa.bindparam("w_orders", expanding=True)),
           *_waiting(outbox.c.event_type.in_(_WEBHOOKS)))
    .values(available_at=sa.bindparam("w_now"))
)
"""The orders' earlier webhooks waiting for a retry, due now (``ix_outbox_order_queue``)."""

_MERCHANT_TRY_AGAIN_NOW = (
    sa.update(outbox)
    .where(outbox.c.merchant_id == sa.bindparam("w_merchant"),
           *_waiting(outbox.c.event_type.in_(_WEBHOOKS)))
    .values(available_at=sa.bindparam("w_now"))
)


async def try_merchant_webhooks_now(conn: AsyncConnection, merchant_id: str, *,
                                    now: datetime) -> None:
    """The merchant's endpoint changed (``webhook_endpoints.set_webhook_url``): its webhooks
    waiting for a retry are due now, and one being tried is retried at once if it fails, as a
    new webhook does for its order's. Fixing a wrong URL is the news they wait for: left alone,
    they (and each order's later ones, behind them) waited up to 8 hours more."""
    await conn.execute(_MERCHANT_TRY_AGAIN_NOW, {"w_merchant": merchant_id, "w_now": now})


_ROW_COLUMNS = ("event_id", "event_type", "aggregate_id", "merchant_id", "payload", "status",
                "attempts", "created_at", "available_at", "trace_context")
"""``event_row``'s keys."""


def _insert_trying(insert: Any, *, once: bool = False) -> Any:
    """``insert`` of one row given as ``e_<column>`` parameters (a parameter named for a column
    would also be taken as a SET of the UPDATE), with the UPDATE for the row's order
    (``w_order``; None for an event that is no merchant webhook) before it. ``once``: the row
    may repeat a fixed event id, and then the INSERT drops it and the UPDATE finds nothing."""
    repeat = outbox.alias("repeat")
    fresh = (~sa.exists().where(repeat.c.event_id == sa.bindparam("e_event_id")),) if once else ()
    try_again_now = (
        sa.update(outbox)
        .where(outbox.c.aggregate_id == sa.bindparam("w_order"),
               # An array, not IN (...): executemany takes no expanding parameter.
               *_waiting(outbox.c.event_type == sa.any_(sa.bindparam(
                   "w_types", _WEBHOOKS, type_=postgresql.ARRAY(sa.String)))), *fresh)
        .values(available_at=sa.bindparam("w_now"))
        .cte("tried_again_now"))
    return insert.values({c: sa.bindparam(f"e_{c}", type_=outbox.c[c].type)
                          for c in _ROW_COLUMNS}).add_cte(try_again_now)


_INSERT_TRYING = {
    "plain": _insert_trying(outbox.insert()),
    "once": _insert_trying(upsert_insert("postgresql")(outbox), once=True)
    .on_conflict_do_nothing(index_elements=["event_id"]),
}
"""PostgreSQL: a merchant webhook's INSERT and the UPDATE before it as one statement, one round
trip fewer per webhook written (bench/outbox.py). Executed once per row (the driver's
executemany), so the UPDATE of a row runs after the INSERTs of the rows before it, whose
``attempts`` 0 keep them out of it; an order's waiting webhooks are brought forward by its first
row, and its later rows find them due already: once per call, as with the two statements."""


@dataclass(frozen=True, kw_only=True)
class PendingEvent:
    event_type: str
    aggregate_id: str | None
    merchant_id: str | None
    payload: dict[str, Any]
    available_at: datetime | None = None
    """When the relay may first handle it; None means at once."""
    event_id: str | None = None
    """A fixed id makes the event happen once: a later event with the same id is dropped by the
    outbox's unique key (while the first is retained). None: a fresh id, every event kept."""


def event_row(event: PendingEvent, *, now: datetime,
              trace_context: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "event_id": event.event_id or new_id("evt"),
        "event_type": event.event_type,
        "aggregate_id": event.aggregate_id,
        "merchant_id": event.merchant_id,
        "payload": event.payload,
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "available_at": event.available_at or now,
        "trace_context": trace_context,
    }


async def add_events(conn: AsyncConnection, events: list[PendingEvent], *, now: datetime) -> None:
    """Insert ``events`` in the open transaction of ``conn``, each carrying the current trace
    context (W3C ``traceparent``) so the relay continues the trace that caused it."""
    if not events:
        return
    once = any(e.event_id for e in events)
    orders = [_webhook_order(e) for e in events]
    with producing(events) as context:
        rows = [event_row(e, now=now, trace_context=context) for e in events]
        if not any(orders):
            await conn.execute(_INSERT_ONCE[conn.dialect.name] if once else _INSERT, rows)
        elif conn.dialect.name == "postgresql":
            await conn.execute(_INSERT_TRYING["once" if once else "plain"], [
                {**{f"e_{c}": v for c, v in row.items()}, "w_order": order, "w_now": now}
                for row, order in zip(rows, orders, strict=True)])
        else:  # before the insert: the new events themselves are never brought forward
            repeats = await _written_already(conn, events) if once else set()
            news = {o for o, e in zip(orders, events, strict=True)
                    if o and e.event_id not in repeats}
            if news:
                await conn.execute(_TRY_AGAIN_NOW, {"w_orders": sorted(news), "w_now": now})
            await conn.execute(_INSERT_ONCE["sqlite"] if once else _INSERT, rows)


async def _written_already(conn: AsyncConnection, events: list[PendingEvent]) -> set[str]:
    """The fixed event ids of ``events`` the outbox holds already: their INSERT drops them."""
    fixed = [e.event_id for e in events if e.event_id]
    found = await conn.execute(sa.select(outbox.c.event_id).where(outbox.c.event_id.in_(fixed)))
    return set(found.scalars())


def _webhook_order(event: PendingEvent) -> str | None:
    """The order whose earlier webhooks writing ``event`` brings forward, if it is a webhook."""
    if event.event_type in MERCHANT_VISIBLE and event.merchant_id is not None:
        return event.aggregate_id
    return None


@contextlib.contextmanager
def producing(events: list[PendingEvent]) -> Iterator[dict[str, str] | None]:
    """The producer span rows of ``events`` are written under, and its context for their
    ``trace_context`` (None when tracing is off): for a caller that writes the rows itself."""
    with tracing.span("outbox.add", kind=SpanKind.PRODUCER, attributes={
            "lunas.event_types": sorted({e.event_type for e in events})}):
        yield tracing.carrier()
