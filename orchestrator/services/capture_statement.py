"""A manual-transfer capture in one statement, on PostgreSQL.

A capture writes four rows: the order, its transfer attempt (the first, blind proposal of a
unique amount), its ``order.captured`` event and the reply kept under the idempotency key. As
four INSERTs they are four round trips, and each costs the api ~60 µs of CPU and PostgreSQL a
wake-up, more than the inserts themselves (bench/PROFILE.md). Chained as data-modifying CTEs
they are one:

    WITH o AS (INSERT INTO orders ... ON CONFLICT (merchant_id, merchant_order_id) DO NOTHING),
         a AS (INSERT INTO payment_attempts ... SELECT ... FROM o
               ON CONFLICT (bank, account, amount) WHERE holds_code DO NOTHING),
         e AS (INSERT INTO outbox ... SELECT ... FROM a),
         k AS (INSERT INTO idempotency_keys ... SELECT ... FROM a ON CONFLICT DO NOTHING)
    SELECT count(o), count(a), count(e), count(k)

Each row is written only if the one before it was, so the counts say exactly what the
four-statement path would have found, and the caller goes on as that path does: an order or a
key that is taken rolls the transaction back; an amount that is held keeps the order row and
proposes another amount the usual way (``manual_transfer.issue_transfer``). The rows are the
same rows, built by the same functions; only the number of round trips differs. SQLite (the
embedded default) has no data-modifying CTEs and keeps the four statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.store.tables import idempotency_keys, orders, outbox, payment_attempts


@dataclass(frozen=True)
class Written:
    order: bool
    """False: the merchant order id is taken (nothing else was written)."""
    attempt: bool
    """False: the proposed amount is held by another open order (only the order was written)."""
    reply: bool
    """False (with ``attempt``): the idempotency key was taken by a concurrent request."""


def _values(table: sa.Table, prefix: str, columns: tuple[str, ...]) -> list[Any]:
    return [sa.bindparam(f"{prefix}{c}", type_=table.c[c].type) for c in columns]


_ORDER_COLUMNS = ("id", "merchant_id", "merchant_order_id", "amount", "currency", "state", "rail",
                  "channel", "customer_name", "customer_email", "customer_phone", "metadata",
                  "created_at", "updated_at", "expires_at", "paid_at", "review_reason",
                  "trace_context")
_ATTEMPT_COLUMNS = ("id", "order_id", "rail", "provider", "state", "transfer_amount",
                    "unique_code", "payout_bank", "payout_account_number", "payout_account_name",
                    "holds_code", "created_at", "updated_at", "expires_at")
_EVENT_COLUMNS = ("event_id", "event_type", "aggregate_id", "merchant_id", "payload", "status",
                  "attempts", "created_at", "available_at", "trace_context")
_REPLY_COLUMNS = ("merchant_id", "key", "request_hash", "order_id", "response_status",
                  "response_body", "created_at")


def _build() -> sa.Select[Any]:
    o = (postgresql.insert(orders)
         .values(dict(zip(_ORDER_COLUMNS, _values(orders, "o_", _ORDER_COLUMNS), strict=True)))
         .on_conflict_do_nothing(index_elements=["merchant_id", "merchant_order_id"])
         .returning(orders.c.id).cte("o"))
    a = (postgresql.insert(payment_attempts)
         .from_select(list(_ATTEMPT_COLUMNS), sa.select(
             *_values(payment_attempts, "a_", _ATTEMPT_COLUMNS)).select_from(o))
         .on_conflict_do_nothing(
             index_elements=["payout_bank", "payout_account_number", "transfer_amount"],
             index_where=payment_attempts.c.holds_code)
         .returning(payment_attempts.c.id).cte("a"))
    e = (outbox.insert()
         .from_select(list(_EVENT_COLUMNS), sa.select(
             *_values(outbox, "e_", _EVENT_COLUMNS)).select_from(a))
         .returning(outbox.c.id).cte("e"))
    k = (postgresql.insert(idempotency_keys)
         .from_select(list(_REPLY_COLUMNS), sa.select(
             *_values(idempotency_keys, "k_", _REPLY_COLUMNS)).select_from(a))
         .on_conflict_do_nothing()
         .returning(idempotency_keys.c.key).cte("k"))

    def count(cte: sa.CTE) -> Any:
        return sa.select(sa.func.count()).select_from(cte).scalar_subquery()

    # Every CTE is named in the final SELECT: PostgreSQL runs a data-modifying CTE either way,
    # but SQLAlchemy only renders the ones the statement refers to.
    return sa.select(count(o), count(a), count(e), count(k))


_CAPTURE = _build()


async def write_capture(conn: AsyncConnection, *, order: dict[str, Any],
                        attempt: dict[str, Any], event: dict[str, Any],
                        reply: dict[str, Any]) -> Written:
    """The four rows in one statement, inside the caller's transaction."""
    params = {**{f"o_{c}": order[c] for c in _ORDER_COLUMNS},
              **{f"a_{c}": attempt[c] for c in _ATTEMPT_COLUMNS},
              **{f"e_{c}": event[c] for c in _EVENT_COLUMNS},
              **{f"k_{c}": reply[c] for c in _REPLY_COLUMNS}}
    wrote_order, wrote_attempt, wrote_event, wrote_reply = (
        await conn.execute(_CAPTURE, params)).one()
    assert wrote_event == wrote_attempt  # the event follows the attempt; it has no conflict
    return Written(order=bool(wrote_order), attempt=bool(wrote_attempt), reply=bool(wrote_reply))
