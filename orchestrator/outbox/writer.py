"""Adds events to the outbox inside the caller's transaction. It never commits: the unit of work
does, so a state change and the events it causes land together or not at all (rule 5).

An order's merchant webhooks go out one at a time, in outbox order (``queries.held_back``): a new
one waits for the order's earlier ones. After an endpoint outage the earliest may be waiting for
a retry hours away, and the new one (an ``order.paid``, say) would wait that long too. So writing
a merchant webhook brings the next try of its order's earlier ones that are waiting for a retry
forward to now: the new event is news the merchant is waiting for, and an endpoint that answers
again is found at once. Each new event brings them forward once (a dead endpoint is tried once
more per event written, not hammered); the try counts as any other (``attempts``), and its
failure gets the next backoff of the retry policy as usual. (The bulk statement import writes
its ``order.paid`` in SQL of its own, ``reconciliation._INSERT_ORDER_EVENTS``, without this.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.events import MERCHANT_VISIBLE
from orchestrator.domain.ids import new_id
from orchestrator.store.database import upsert_insert
from orchestrator.store.tables import outbox
from orchestrator.telemetry import tracing

_INSERT = outbox.insert()
"""One statement object for every call: its compiled form and cache key are kept on it."""
_INSERT_ONCE = {dialect: upsert_insert(dialect)(outbox).on_conflict_do_nothing(
    index_elements=["event_id"]) for dialect in ("postgresql", "sqlite")}
"""For events that carry their own ``event_id``: a second one with that id is dropped."""


_WEBHOOKS = sorted(MERCHANT_VISIBLE)
_TRY_AGAIN_NOW = (
    sa.update(outbox)
    .where(outbox.c.aggregate_id.in_(sa.bindparam("w_orders", expanding=True)),
           outbox.c.status == "pending",
           outbox.c.event_type.in_(_WEBHOOKS),
           outbox.c.merchant_id.is_not(None),
           # Tried and failed, now waiting for its retry: never one written to start later.
           outbox.c.attempts > 0,
           outbox.c.available_at > sa.bindparam("w_now"),
           outbox.c.lease_owner.is_(None))
    .values(available_at=sa.bindparam("w_now"))
)
"""The order's earlier webhooks waiting for a retry, due now (``ix_outbox_order_queue``)."""


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
    insert = (_INSERT_ONCE[conn.dialect.name] if any(e.event_id for e in events)
              else _INSERT)
    orders = sorted({e.aggregate_id for e in events if e.event_type in MERCHANT_VISIBLE
                     and e.aggregate_id is not None and e.merchant_id is not None})
    with producing(events) as context:
        if orders:  # before the insert: the new events themselves are never brought forward
            await conn.execute(_TRY_AGAIN_NOW, {"w_orders": orders, "w_now": now})
        await conn.execute(insert,
                           [event_row(e, now=now, trace_context=context) for e in events])


@contextlib.contextmanager
def producing(events: list[PendingEvent]) -> Iterator[dict[str, str] | None]:
    """The producer span rows of ``events`` are written under, and its context for their
    ``trace_context`` (None when tracing is off): for a caller that writes the rows itself."""
    with tracing.span("outbox.add", kind=SpanKind.PRODUCER, attributes={
            "lunas.event_types": sorted({e.event_type for e in events})}):
        yield tracing.carrier()
